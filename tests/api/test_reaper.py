"""The API also reaps: a job whose worker died goes back to the queue even when no worker is alive to notice."""

from __future__ import annotations

from service import jobs as repo
from service.db import session_scope
from service.models import Job
from tests.servers import wait_until


def _counter(http, name: str) -> float:
    lines = [line for line in http.get("/metrics").text.splitlines() if line.startswith(f"clipforge_{name}_total ")]
    return float(lines[0].split()[1])


def test_a_lapsed_lease_requeues_the_job_without_any_worker(api, http):
    requeued, lost = _counter(http, "jobs_requeued"), _counter(http, "leases_lost")
    job_id = http.post("/v1/jobs", json={"classes": ["a", "b"]}).json()["id"]
    with session_scope(api.app.state.session_factory) as session:
        assert repo.claim(session, job_id, "worker-that-dies", lease_seconds=0.5, max_attempts=3) is not None
    running = http.get(f"/v1/jobs/{job_id}").json()
    assert running["status"] == "running"
    # The resource shows the worker's last sign of life and when its lease lapses without another.
    assert running["heartbeat_at"] is not None and running["lease_expires_at"] > running["heartbeat_at"]
    job = wait_until(lambda: (j := http.get(f"/v1/jobs/{job_id}").json())["status"] == "queued" and j, 10, what="job requeued")
    assert job["attempts"] == 1 and job["stage"] is None and job["progress"] == 0
    warnings = [e for e in http.get(f"/v1/jobs/{job_id}/events").json()["data"] if e["kind"] == "warning"]
    assert "worker-that-dies" in warnings[0]["message"]
    # /metrics counts it, from the database (every process's reaper adds to the same counters).
    assert _counter(http, "jobs_requeued") == requeued + 1 and _counter(http, "leases_lost") == lost + 1


def test_a_submitted_job_is_unflagged_once_the_api_has_published_it(api, http):
    # The outbox: the row is committed flagged, the API publishes its message, then clears the flag; the reaper has
    # nothing left to publish for it.
    job_id = http.post("/v1/jobs", json={"classes": ["a", "b"]}).json()["id"]
    with session_scope(api.app.state.session_factory) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "queued" and job.publish_due_at is None
        events, _ = repo.list_events(session, job_id)
        assert [e.status for e in events] == ["queued"]


def test_a_silent_worker_makes_its_job_stalled_at_once_and_a_heartbeat_clears_it(api, http):
    # The test settings' beat is 1 s (a third of the 3 s lease), so three missed beats are 3 s: the job says "stalled"
    # from then on, and the event stream says so once, while the lease (60 s here) has long to run.
    settings = api.app.state.settings
    job_id = http.post("/v1/jobs", json={"classes": ["a", "b"]}).json()["id"]
    with session_scope(api.app.state.session_factory) as session:
        assert repo.claim(session, job_id, "worker-that-hangs", lease_seconds=60, max_attempts=3) is not None
    assert http.get(f"/v1/jobs/{job_id}").json()["stalled"] is False
    stalled = wait_until(lambda: (j := http.get(f"/v1/jobs/{job_id}").json())["stalled"] and j, settings.stall_after_seconds + 5,
                         what="job stalled")  # fmt: skip
    assert stalled["status"] == "running"

    def warnings() -> list[dict]:
        return [e for e in http.get(f"/v1/jobs/{job_id}/events").json()["data"] if e["kind"] == "warning"]

    said = wait_until(lambda: warnings() or None, settings.reaper_interval_seconds * 4 + 5, what="a stalled warning")
    assert said[0]["message"].startswith("stalled:") and "worker-that-hangs" in said[0]["message"] and said[0]["data"]["stalled"]
    with session_scope(api.app.state.session_factory) as session:  # the worker comes back: its next renewal
        assert repo.renew_lease(session, job_id, "worker-that-hangs", 60) == "running"
    assert http.get(f"/v1/jobs/{job_id}").json()["stalled"] is False
    assert len(warnings()) == 1  # one warning per silence
