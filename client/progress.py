"""Following a job in a terminal: a live bar (status or stage, percent, ETA) on stderr until the job ends."""

from __future__ import annotations

import sys

from api.schemas import Job
from client.client import ClipforgeClient


def follow(client: ClipforgeClient, job_id: str, *, timeout: float | None = None, quiet: bool = False) -> Job:
    """Wait for the job with a progress bar (none when ``quiet``); the finished job, whatever its status."""
    from tqdm import tqdm

    bar = tqdm(total=100, disable=quiet, bar_format="{desc} {percentage:3.0f}%|{bar}|", file=sys.stderr)
    shown: dict[str, object] = {}

    def show(job: Job) -> None:
        # Redraw only on a change of status, stage, whole percent or ETA second: logs stay short off a terminal.
        eta = "" if job.eta_seconds is None else f"ETA {job.eta_seconds:.0f}s"
        state = (job.status, job.stage, round(job.progress * 100), eta)
        if shown.get("state") == state:
            return
        shown["state"] = state
        label = job.stage if job.status == "running" else job.status
        bar.set_description_str(f"{label:<13}{eta if job.status == 'running' else '':>9}", refresh=False)
        bar.n = round(job.progress * 100)
        bar.refresh()

    try:
        return client.wait(job_id, timeout=timeout, on_update=show, raise_on_failure=False)
    finally:
        bar.close()
