"""What one job gains from more workers: the same job run by 1 worker of 1 thread, then by 2 workers of 1 thread each.

In one run it starts a throwaway redis-server, then for each worker count a fresh service in a temp dir (``clipforge api``
and the ``clipforge worker`` processes, SQLite, local storage, the service's default settings: a job's synthesis is split
into chunks of ``CLIPFORGE_SYNTHESIS_CHUNK_BATCHES`` batches that every idle worker runs), warms every worker up (the
teacher loads once per process), submits the job and waits for it. It reports the job's synthesis seconds (the
``synthesizing`` stage: from the split to the last chunk done) and total seconds (submission to success), the speed-ups
of 2 workers over 1, the load average around each run (the figures mean something only on an otherwise idle machine),
whether both runs gave the same surrogate set and student (they must), and the command; it prints them and writes
``workers.md`` and ``workers.json``.

    python -m bench.workers                                  # the default CPU job (make demo's), into bench/results
    python -m bench.workers --quick --out runs/workers-quick # a tiny job: a check of the machinery, not figures to keep
    clipforge bench workers [--quick] [--config SPEC.json] [--out DIR]

Only synthesis runs on several workers; distillation and export stay on one. The default job spends most of its time
distilling (22 s of synthesis in 354 s on 2 cores), so its whole-job speed-up is small by construction (Amdahl); a job
with inversion steps (``--config`` with ``synthesis.steps``) is where the split pays.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.servers import REPO, free_port, redis_server, service_env, started, wait_until

DEFAULT_CONFIG = REPO / "bench" / "configs" / "demo.json"
DEFAULT_CLASSES = ["circle", "square", "triangle", "star", "hexagon", "cross", "heart", "ring"]  # make demo's shape8
# A machinery check: four chunks of a few inversion steps, a tiny student.
QUICK_SPEC = {
    "teacher": "shapes-mini",
    "classes": ["circle", "square", "star"],
    "synthesis": {"images_per_class": 8, "steps": 10, "cutouts": 1, "batch_size": 6},
    "distillation": {"epochs": 2, "warmup_epochs": 1, "batch_size": 8},
    "student": {"arch": "tiny_cnn"},
    "seed": 0,
}
# Warms each worker up before the measured job: enough chunks that every worker loads the teacher and decoder.
WARMUP_SPEC = {**QUICK_SPEC, "synthesis": {"images_per_class": 2, "steps": 1, "cutouts": 1, "batch_size": 1}, "seed": 1}
WORKER_COUNTS = (1, 2)
THREADS_PER_WORKER = 1
READY_TIMEOUT_S = 90
JOB_TIMEOUT_S = 3 * 3600
POLL_S = 0.5


def job_spec(config: Path | None, quick: bool) -> dict[str, Any]:
    if quick and config is None:
        return dict(QUICK_SPEC)
    spec = json.loads((config or DEFAULT_CONFIG).read_text())
    spec.setdefault("classes", DEFAULT_CLASSES)
    return spec


def _seconds(job: dict[str, Any], start: str, end: str) -> float:
    return round((datetime.fromisoformat(job[end]) - datetime.fromisoformat(job[start])).total_seconds(), 2)


def _onnx_weights_sha256(onnx_bytes: bytes) -> str:
    """The student's weights (its initializers), without the model card, which records when it was made."""
    import onnx
    from onnx import numpy_helper

    digest = hashlib.sha256()
    for initializer in sorted(onnx.load_from_string(onnx_bytes).graph.initializer, key=lambda i: i.name):
        digest.update(initializer.name.encode())
        digest.update(numpy_helper.to_array(initializer).tobytes())
    return digest.hexdigest()


def _wait(http: httpx.Client, job_id: str, timeout: float) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        job = http.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    job = wait_until(finished, timeout, POLL_S, f"job {job_id} finished", ignore=(httpx.HTTPError,))
    assert isinstance(job, dict)
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
    return job


def run_once(spec: dict[str, Any], workers: int, redis_url: str, folder: Path, settings: dict[str, str]) -> dict[str, Any]:
    """One fresh service with ``workers`` workers of one thread: warm-up, then the job; its timings and fingerprints."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = service_env(folder, host="127.0.0.1", port=port, broker_url=redis_url, **settings)
    env["OMP_NUM_THREADS"] = str(THREADS_PER_WORKER)
    cli = [sys.executable, "-m", "cli.main"]
    with ExitStack() as stack:
        stack.enter_context(started([*cli, "api"], env, folder / "api.log"))
        for index in range(workers):
            stack.enter_context(started([*cli, "worker", "--loglevel", "WARNING"], env, folder / f"worker-{index}.log"))
        url = f"http://127.0.0.1:{port}"
        http = stack.enter_context(httpx.Client(base_url=url, timeout=30))
        wait_until(lambda: http.get("/readyz").status_code == 200, READY_TIMEOUT_S, 0.2, "service ready", ignore=(httpx.HTTPError,))
        _wait(http, http.post("/v1/jobs", json=WARMUP_SPEC).json()["id"], READY_TIMEOUT_S * 4)
        load_before = os.getloadavg()
        began = time.monotonic()
        submitted = http.post("/v1/jobs", json=spec)
        submitted.raise_for_status()
        job = _wait(http, submitted.json()["id"], JOB_TIMEOUT_S)
        wall = time.monotonic() - began
        load_after = os.getloadavg()
        metrics = job["metrics"] or {}
        artifact = f"/v1/jobs/{job['id']}/artifacts"
        return {
            "workers": workers,
            "threads_per_worker": THREADS_PER_WORKER,
            "chunks": (metrics.get("synthesis_chunks") or {}).get("chunks", 1),
            "workers_that_synthesized": (metrics.get("synthesis_chunks") or {}).get("workers", 1),
            "synthesis_seconds": metrics.get("stage_seconds", {}).get("synthesizing"),
            "stage_seconds": metrics.get("stage_seconds", {}),
            "total_seconds": _seconds(job, "created_at", "finished_at"),
            "client_seconds": round(wall, 2),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "surrogate_sha256": metrics.get("surrogate_sha256"),
            "samples_sha256": hashlib.sha256(http.get(f"{artifact}/samples.png").content).hexdigest(),
            "student_weights_sha256": _onnx_weights_sha256(http.get(f"{artifact}/student.onnx").content),
        }


def measure(spec: dict[str, Any], counts: tuple[int, ...] = WORKER_COUNTS, settings: dict[str, str] | None = None,
            log: Any = print) -> dict[str, Any]:  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="clipforge-workers-"))
    runs = []
    try:
        with redis_server(folder / "redis") as redis_url:
            for index, workers in enumerate(counts):
                # A database of its own per run (and a data dir): nothing of the previous run is left to pick up.
                url = redis_url.rsplit("/", 1)[0] + f"/{index + 1}"
                run = run_once(spec, workers, url, folder / f"workers-{workers}", settings or {})
                log(f"{workers} worker(s): synthesis {run['synthesis_seconds']} s, total {run['total_seconds']} s, "
                    f"{run['chunks']} chunks on {run['workers_that_synthesized']} worker(s), load {run['load_average_after']}")  # fmt: skip
                runs.append(run)
    except BaseException:
        log(f"the services' logs are in {folder}")
        raise
    shutil.rmtree(folder, ignore_errors=True)
    one, *more = runs
    for run in more:
        run["synthesis_speedup"] = _ratio(one["synthesis_seconds"], run["synthesis_seconds"])
        run["total_speedup"] = _ratio(one["total_seconds"], run["total_seconds"])
    keys = ("surrogate_sha256", "samples_sha256", "student_weights_sha256")
    return {
        "spec": spec,
        "runs": runs,
        "same_student": all(all(run[k] == one[k] for k in keys) for run in more),
        "cpus": os.cpu_count(),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _ratio(before: float | None, after: float | None) -> float | None:
    return round(before / after, 2) if before and after else None


def to_markdown(report: dict[str, Any], command: str) -> str:
    lines = [
        "# One job over many workers: speed-up",
        "",
        f"`{command}` on {report['date']} ({report['cpus']} CPUs). Each worker has one torch thread; the job's synthesis is",
        "split into chunks that every idle worker runs, and its distillation and export run on one worker.",
        "",
        "| workers | chunks (workers that ran them) | synthesis (s) | total (s) | synthesis speed-up | total speed-up | load average |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in report["runs"]:
        chunks = f"{run['chunks']} ({run['workers_that_synthesized']})"
        speedups = f"{run.get('synthesis_speedup', 1.0)} | {run.get('total_speedup', 1.0)}"
        load = f"{' '.join(map(str, run['load_average_before']))} → {' '.join(map(str, run['load_average_after']))}"
        lines.append(f"| {run['workers']} | {chunks} | {run['synthesis_seconds']} | {run['total_seconds']} | {speedups} | {load} |")
    same = "yes" if report["same_student"] else "**no**"
    lines += [
        "",
        f"Same surrogate set, samples and student weights on every run: {same}.",
        "Synthesis: the `synthesizing` stage, from the split to the last chunk done; total: submission to success. "
        "Load average: 1, 5 and 15 minutes, before and after the job; one above the worker count means other work shared",
        "the CPUs, and then the figures are not the speed-up.",
        "",
        "The job's spec:",
        "",
        "```json",
        json.dumps(report["spec"], indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a tiny job (four chunks, seconds): checks the machinery, no figures")
    parser.add_argument("--config", type=Path, default=None, help="the job's spec as JSON (default: bench/configs/demo.json)")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a service setting for both runs, e.g. synthesis_chunk_batches=2 (repeatable)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="write workers.md and workers.json here (default: bench/results, "
                        "or nowhere with --quick)")  # fmt: skip


def run(args: argparse.Namespace, command: str) -> int:
    spec = job_spec(args.config, args.quick)
    settings = dict(item.split("=", 1) for item in args.setting)
    report = measure(spec, settings=settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    report["command"] = command
    markdown = to_markdown(report, command)
    out = args.out if args.out is not None or args.quick else REPO / "bench" / "results"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "workers.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "workers.md").write_text(markdown)
    print(markdown)
    return 0 if report["same_student"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    command = "python -m bench.workers " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    return run(args, command.strip())


if __name__ == "__main__":
    sys.exit(main())
