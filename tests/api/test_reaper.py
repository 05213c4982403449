"""The API also reaps: a job whose worker died goes back to the queue even when no worker is alive to notice."""

from __future__ import annotations

from service import jobs as repo
from service.db import session_scope
from service.models import Job
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


def test_a_submitted_job_is_unflagged_once_the_api_has_published_it(api, http):
    # The outbox: the row is committed flagged, the API publishes its message, then clears the flag; the reaper has
    # nothing left to publish for it.
    job_id = http.post("/v1/jobs", json={"classes": ["a", "b"]}).json()["id"]
    with session_scope(api.app.state.session_factory) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "queued" and job.publish_due_at is None
        events, _ = repo.list_events(session, job_id)
        assert [e.status for e in events] == ["queued"]
