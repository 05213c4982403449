"""Cancel as the README describes it: idempotent (a cancelled job is returned unchanged, 200); a succeeded or failed job
answers 409 `job_finished` and stays as it was."""

from __future__ import annotations

from service import jobs as repo
from service.db import session_scope
from tests.api.conftest import finished_job_with_artifact


def _events(http, job_id: str) -> list[dict]:
    return http.get(f"/v1/jobs/{job_id}/events", params={"limit": 500}).json()["data"]


def test_cancelling_a_cancelled_job_returns_it_unchanged(http):
    job_id = http.post("/v1/jobs", json={"classes": ["a", "b"]}).json()["id"]
    first = http.post(f"/v1/jobs/{job_id}/cancel")
    assert first.status_code == 200 and first.json()["status"] == "cancelled"
    events = _events(http, job_id)
    again = http.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 200 and again.json() == first.json()  # the same job, not touched again
    assert _events(http, job_id) == events  # no second cancellation event


def test_a_succeeded_job_answers_409_job_finished(api, http):
    job_id = finished_job_with_artifact(api, http)
    before = http.get(f"/v1/jobs/{job_id}").json()
    response = http.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "job_finished" and "succeeded" in error["message"]
    assert http.get(f"/v1/jobs/{job_id}").json() == before


def test_a_failed_job_answers_409_job_finished(api, http):
    job_id = http.post("/v1/jobs", json={"classes": ["c", "d"]}).json()["id"]
    with session_scope(api.app.state.session_factory) as session:
        assert repo.claim(session, job_id, "test-worker", lease_seconds=60, max_attempts=3) is not None
    with session_scope(api.app.state.session_factory) as session:
        assert repo.finish(session, job_id, "test-worker", repo.FAILED, code="internal_error", message="boom")
    response = http.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 409 and response.json()["error"]["code"] == "job_finished"
    assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "failed"
