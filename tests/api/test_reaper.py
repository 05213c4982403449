"""The API also reaps: a job whose worker died goes back to the queue even when no worker is alive to notice."""

from __future__ import annotations

from service import jobs as repo
from service.db import session_scope
from tests.servers import wait_until


def test_a_lapsed_lease_requeues_the_job_without_any_worker(api, http):
    job_id = http.post("/v1/jobs", json={"classes": ["a", "b"]}).json()["id"]
    with session_scope(api.app.state.session_factory) as session:
        assert repo.claim(session, job_id, "worker-that-dies", lease_seconds=0.5, max_attempts=3) is not None
    assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
    job = wait_until(lambda: (j := http.get(f"/v1/jobs/{job_id}").json())["status"] == "queued" and j, 10, what="job requeued")
    assert job["attempts"] == 1 and job["stage"] is None and job["progress"] == 0
    warnings = [e for e in http.get(f"/v1/jobs/{job_id}/events").json()["data"] if e["kind"] == "warning"]
    assert "worker-that-dies" in warnings[0]["message"]
