"""Live job events as Server-Sent Events: every event in order, resumable by Last-Event-ID, ending with the job."""

from __future__ import annotations

import threading
import time

import pytest
from httpx_sse import connect_sse

from client import ApiError, ClipforgeClient
from service import jobs as repo
from service.db import session_scope


def _run_job_in_the_background(api, job_id: str, pause: float = 0.3) -> threading.Thread:
    """A stand-in worker on the real database: claims, reports progress through two stages, succeeds."""

    def work() -> None:
        factory = api.app.state.session_factory
        time.sleep(pause)
        with session_scope(factory) as session:
            assert repo.claim(session, job_id, "stream-test", lease_seconds=60, max_attempts=3) is not None
        for step, stage in enumerate(["preparing", "synthesizing", "synthesizing", "distilling"]):
            time.sleep(pause)
            with session_scope(factory) as session:
                repo.record_progress(session, job_id, "stream-test", stage=stage, progress=0.2 * (step + 1), eta_seconds=9.0,
                                     metrics={}, stage_changed=step != 2)  # fmt: skip
        time.sleep(pause)
        with session_scope(factory) as session:
            assert repo.finish(session, job_id, "stream-test", repo.SUCCEEDED)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_a_stream_delivers_every_event_live_and_ends_with_the_job(api, http):
    job_id = http.post("/v1/jobs", json={"classes": ["a", "b"]}).json()["id"]
    worker = _run_job_in_the_background(api, job_id)
    with ClipforgeClient(api.url) as client:
        began = time.monotonic()
        arrivals = [(time.monotonic() - began, event) for event in client.follow_events(job_id)]
    worker.join(10)
    events = [event for _, event in arrivals]
    assert [e.id for e in events] == [e["id"] for e in http.get(f"/v1/jobs/{job_id}/events?limit=500").json()["data"]]
    assert events[0].status == "queued" and events[-1].status == "succeeded"
    assert [e.stage for e in events if e.kind == "stage"] == ["preparing", "synthesizing", "distilling"]
    # Live: events arrived as they happened over about two seconds, not all at the end.
    assert arrivals[-1][0] - arrivals[1][0] > 1.0


def test_a_stream_resumes_after_the_last_event_id_and_a_finished_jobs_stream_ends_at_once(api, http):
    job_id = http.post("/v1/jobs", json={"classes": ["a", "b"]}).json()["id"]
    _run_job_in_the_background(api, job_id, pause=0.05).join(10)
    everything = http.get(f"/v1/jobs/{job_id}/events?limit=500").json()["data"]
    with connect_sse(http, "GET", f"/v1/jobs/{job_id}/events", params={"stream": "true"},
                     headers={"Last-Event-ID": str(everything[2]["id"])}) as source:  # fmt: skip
        assert source.response.headers["content-type"].startswith("text/event-stream")
        messages = list(source.iter_sse())
    assert [int(m.id) for m in messages if m.event != "end"] == [e["id"] for e in everything[3:]]
    assert messages[-1].event == "end" and '"succeeded"' in messages[-1].data


def test_stream_errors_are_answered_before_streaming(http):
    missing = http.get("/v1/jobs/job_00000000000000000000000000/events", params={"stream": "true"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"
    job_id = http.post("/v1/jobs", json={"classes": ["a", "b"]}).json()["id"]
    bad = http.get(f"/v1/jobs/{job_id}/events", params={"stream": "true"}, headers={"Last-Event-ID": "yesterday"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_cursor"
    with ClipforgeClient(str(http.base_url)) as client, pytest.raises(ApiError) as error:
        list(client.follow_events("job_00000000000000000000000000"))
    assert error.value.code == "job_not_found"


def test_jobs_events_follow_prints_the_stream_until_the_job_ends(api, http):
    import subprocess
    import sys

    from tests.servers import REPO

    job_id = http.post("/v1/jobs", json={"classes": ["a", "b"]}).json()["id"]
    command = [sys.executable, "-m", "cli.main", "jobs", "events", job_id, "--follow", "--url", api.url]
    follower = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _run_job_in_the_background(api, job_id, pause=0.2).join(10)
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    lines = out.splitlines()
    assert "queued" in lines[0] and "succeeded" in lines[-1] and sum("stage" in line for line in lines) == 3
