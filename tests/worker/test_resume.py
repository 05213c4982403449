"""A worker killed with SIGKILL mid-distillation: the requeued attempt resumes from the job's last checkpoint (its events
say from which step), finishes sooner than a fresh start, and makes the student an uninterrupted run makes, bit for bit
(the ONNX model's weights; both workers run one torch thread, as bit-for-bit results need)."""

from __future__ import annotations

import os
import signal
from datetime import datetime

from tests.servers import TINY_SPEC, wait_until
from tests.worker.conftest import open_service
from tests.worker.test_chunked_jobs import onnx_weights_sha256, start_worker

# Distillation of some seconds with a checkpoint every second; synthesis as short as the tiny spec's.
RESUMABLE_SPEC = {
    **TINY_SPEC,
    "classes": ["circle", "square"],
    # Views through the teacher at every step (no fixed views): long enough to be killed halfway on any machine.
    "distillation": {"method": "kd", "steps": 800, "batch_size": 8, "fresh_share": 0.0, "fixed_views": 0},
    "seed": 21,
}


def _seconds(events: list[dict], since_attempt: int) -> float:
    """From the start of attempt ``since_attempt`` (its ``running`` status event) to the job's last event."""
    starts = [e for e in events if e["kind"] == "status" and e["status"] == "running"]
    began = datetime.fromisoformat(starts[since_attempt - 1]["created_at"])
    return (datetime.fromisoformat(events[-1]["created_at"]) - began).total_seconds()


def _student(service, job_id: str) -> str:
    return onnx_weights_sha256(service.http.get(f"/v1/jobs/{job_id}/artifacts/student.onnx").content)


def test_a_killed_distillation_resumes_from_its_checkpoint(tmp_path):
    with open_service(tmp_path, checkpoint_interval_seconds=1.0) as service:
        worker = start_worker(service)
        fresh = service.submit(RESUMABLE_SPEC)
        assert service.wait_finished(fresh["id"], timeout=300)["status"] == "succeeded"
        fresh_seconds = _seconds(service.events(fresh["id"]), 1)

        job = service.submit(RESUMABLE_SPEC)
        checkpoint = service.storage / "artifacts" / job["id"] / "checkpoints" / "distillation.pt"
        service.wait_for(job["id"], lambda j: j["stage"] == "distilling", timeout=300, what="attempt 1 distilling")
        wait_until(checkpoint.exists, 120, 0.05, "a distillation checkpoint")
        wait_until(lambda: service.job(job["id"])["progress"] >= 0.5, 120, 0.05, "half the job done")
        os.killpg(worker.pid, signal.SIGKILL)  # no chance to clean up: only the lease can tell
        worker.wait()
        start_worker(service)
        done = service.wait_finished(job["id"], timeout=300)
        events = service.events(job["id"])
        resumed = [e for e in events if e["kind"] == "resumed"]
        resumed_seconds = _seconds(events, 2)
        print(f"fresh start {fresh_seconds:.1f} s; attempt 2 {resumed_seconds:.1f} s; " + "; ".join(e["message"] for e in resumed))
        assert done["status"] == "succeeded" and done["attempts"] == 2, done
        distilling = [e for e in resumed if e["stage"] == "distilling"]
        assert len(distilling) == 1 and 0 < distilling[0]["data"]["step"] < distilling[0]["data"]["total"], resumed
        assert any(e["stage"] == "synthesizing" for e in resumed)  # the surrogate set was not synthesized again
        assert resumed_seconds < fresh_seconds
        assert _student(service, job["id"]) == _student(service, fresh["id"])
        assert not checkpoint.parent.exists()  # the job's end removed its checkpoints
