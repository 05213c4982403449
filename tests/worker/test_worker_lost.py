"""A worker killed with SIGKILL mid-job: after a restart the job runs again from scratch and finishes; nothing is lost.

On the embedded transport the lease reaper re-sends the job; on Redis the broker also redelivers the
unacked message (acks_late) after its visibility timeout. Either way exactly one run succeeds.
"""

from __future__ import annotations

import hashlib
import os
import signal

import pytest

from tests.servers import SLOW_SPEC
from tests.worker.conftest import open_service, started

ARTIFACTS = ["metrics.json", "model_card.json", "samples.png", "student.onnx", "student.torchscript.pt"]


def _kill_and_restart(service) -> None:
    worker = service.start_worker()
    job = service.submit({**SLOW_SPEC, "classes": ["circle", "square", "star"], "seed": 11})
    service.wait_for(job["id"], started, timeout=120, what="job running")
    os.killpg(worker.pid, signal.SIGKILL)  # the worker and anything it started, with no chance to clean up
    worker.wait()
    assert service.job(job["id"])["status"] == "running"  # the row still says running: only the lease can tell
    service.start_worker()
    done = service.wait_finished(job["id"], timeout=240)
    timeline = [(e["created_at"][11:22], e["kind"], e["status"] or e["stage"], e["message"]) for e in service.events(job["id"])]
    print("\n".join(map(str, timeline)))
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    events = service.events(job["id"])
    assert [e["status"] for e in events if e["kind"] == "status"].count("running") == 2
    listing = service.http.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]
    assert [a["name"] for a in listing] == ARTIFACTS
    for artifact in listing:
        assert hashlib.sha256(service.http.get(artifact["url"]).content).hexdigest() == artifact["sha256"]
    assert sorted(p.name for p in (service.storage / "artifacts" / job["id"]).iterdir()) == ARTIFACTS


def test_killed_worker_on_the_embedded_transport(tmp_path):
    with open_service(tmp_path) as service:
        _kill_and_restart(service)
        requeued = [e for e in service.events(service.http.get("/v1/jobs").json()["data"][0]["id"]) if e["kind"] == "warning"]
        assert requeued and "requeued" in requeued[0]["message"]


@pytest.mark.parametrize("visibility_timeout", [5])
def test_killed_worker_on_redis(tmp_path, redis_url, visibility_timeout):
    with open_service(tmp_path, broker_url=redis_url, broker_visibility_timeout_seconds=visibility_timeout) as service:
        _kill_and_restart(service)
