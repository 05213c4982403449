"""A worker killed with SIGKILL mid-job, once while synthesizing and once while distilling: after each restart the job
runs again from scratch, and its third attempt finishes with complete, checksummed artifacts; nothing is lost.

On the embedded transport the lease reaper re-sends the job; on Redis the broker also redelivers the
unacked message (acks_late) after its visibility timeout. Either way exactly one run succeeds.
"""

from __future__ import annotations

import hashlib
import os
import signal

import pytest

from tests.servers import SLOW_SPEC
from tests.worker.conftest import open_service

ARTIFACTS = ["metrics.json", "model_card.json", "samples.png", "student.onnx", "student.torchscript.pt"]


# Synthesis short enough for three attempts, distillation long enough (a few seconds) to be caught and killed in.
KILLABLE_SPEC = {
    **SLOW_SPEC,
    "synthesis": {**SLOW_SPEC["synthesis"], "steps": 10},
    "distillation": {**SLOW_SPEC["distillation"], "epochs": 24},
}


def _in_stage(stage: str, attempt: int):
    return lambda job: job["status"] == "running" and job["stage"] == stage and job["attempts"] == attempt


def _kill_worker(service, worker) -> None:
    os.killpg(worker.pid, signal.SIGKILL)  # the worker and anything it started, with no chance to clean up
    worker.wait()


def _kill_and_restart(service) -> None:
    worker = service.start_worker()
    job = service.submit({**KILLABLE_SPEC, "classes": ["circle", "square", "star"], "seed": 11})
    service.wait_for(job["id"], _in_stage("synthesizing", 1), timeout=120, what="attempt 1 synthesizing")
    _kill_worker(service, worker)
    assert service.job(job["id"])["status"] == "running"  # the row still says running: only the lease can tell
    worker = service.start_worker()
    service.wait_for(job["id"], _in_stage("distilling", 2), timeout=180, what="attempt 2 distilling")
    _kill_worker(service, worker)
    assert service.job(job["id"])["stage"] == "distilling"
    service.start_worker()
    done = service.wait_finished(job["id"], timeout=240)
    timeline = [(e["created_at"][11:22], e["kind"], e["status"] or e["stage"], e["message"]) for e in service.events(job["id"])]
    print("\n".join(map(str, timeline)))
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 3  # max_attempts: the two lost runs and the one that finished
    events = service.events(job["id"])
    assert [e["status"] for e in events if e["kind"] == "status"].count("running") == 3
    listing = service.http.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]
    assert [a["name"] for a in listing] == ARTIFACTS
    for artifact in listing:
        assert hashlib.sha256(service.http.get(artifact["url"]).content).hexdigest() == artifact["sha256"]
    assert sorted(p.name for p in (service.storage / "artifacts" / job["id"]).iterdir()) == ARTIFACTS


def test_killed_worker_on_the_embedded_transport(tmp_path):
    with open_service(tmp_path) as service:
        _kill_and_restart(service)
        requeued = [e for e in service.events(service.http.get("/v1/jobs").json()["data"][0]["id"]) if e["kind"] == "warning"]
        assert len(requeued) == 2 and all("requeued" in e["message"] for e in requeued)


@pytest.mark.parametrize("visibility_timeout", [5])
def test_killed_worker_on_redis(tmp_path, redis_url, visibility_timeout):
    with open_service(tmp_path, broker_url=redis_url, broker_visibility_timeout_seconds=visibility_timeout) as service:
        _kill_and_restart(service)
