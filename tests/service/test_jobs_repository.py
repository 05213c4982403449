"""The job state machine and repository on a migrated SQLite database (and the lease reaper)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from service import jobs as repo
from service.db import downgrade, make_engine, make_session_factory, migrate, session_scope
from service.errors import ServiceError
from service.ids import MonotonicIds, new_id
from service.models import Job, utcnow
from service.storage import LocalStorage, artifact_key, upload_key

REPO = Path(__file__).resolve().parents[2]
SPEC = {"teacher": "shapes-mini", "classes": [{"name": "a"}, {"name": "b"}], "seed": 7}


@pytest.fixture(params=["sqlite", "postgresql"])
def factory(request, tmp_path):
    """Every test on SQLite (the embedded default) and on PostgreSQL (production), both migrated by Alembic."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    migrate(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()
    if request.param == "postgresql":
        downgrade(url, "base")


def _new(factory, **kwargs) -> str:
    job_id = new_id("job")
    with session_scope(factory) as session:
        repo.create_job(session, job_id=job_id, spec=SPEC, **kwargs)
    return job_id


def _job(factory, job_id) -> Job:
    with session_scope(factory) as session:
        return repo.get_job(session, job_id)


def test_ids_sort_by_creation():
    ids = [new_id("job") for _ in range(50)]
    assert len(set(ids)) == 50
    import time

    later = (time.sleep(0.002), new_id("job"))[1]
    assert all(later > i for i in ids)


def test_transition_table_has_no_way_out_of_a_terminal_state():
    for status in repo.TERMINAL:
        assert not repo.TRANSITIONS[status]
    assert repo.can_transition("queued", "running") and not repo.can_transition("queued", "succeeded")
    assert repo.can_transition("running", "cancelling") and repo.can_transition("cancelling", "cancelled")


def test_claim_progress_and_success_record_artifacts_in_one_step(factory, tmp_path):
    job_id = _new(factory)
    with session_scope(factory) as session:
        job = repo.claim(session, job_id, "w1", lease_seconds=30, max_attempts=3)
    assert job is not None and job.status == "running" and job.attempts == 1 and job.started_at is not None
    with session_scope(factory) as session:
        assert repo.claim(session, job_id, "w2", 30, 3) is None  # a live lease belongs to w1
        assert repo.record_progress(session, job_id, "w1", stage="synthesizing", progress=0.3, eta_seconds=9.0,
                                    metrics={}, stage_changed=True)  # fmt: skip
        assert not repo.record_progress(session, job_id, "w2", stage="distilling", progress=0.9, eta_seconds=1.0,
                                        metrics={}, stage_changed=True)  # fmt: skip
    assert _job(factory, job_id).stage == "synthesizing"
    stored = LocalStorage(tmp_path / "s").put(artifact_key(job_id, "metrics.json"), b"{}")
    with session_scope(factory) as session:
        assert repo.finish(session, job_id, "w1", repo.SUCCEEDED, artifacts=[("metrics.json", "application/json", stored)])
        assert not repo.finish(session, job_id, "w1", repo.FAILED, code="x", message="late")  # already finished
        [artifact] = repo.list_artifacts(session, job_id)
    assert artifact.sha256 == stored.sha256 and artifact.size == 2
    job = _job(factory, job_id)
    assert job.status == "succeeded" and job.progress == 1.0 and job.finished_at and job.lease_owner is None


def test_the_engines_warnings_become_warning_events_before_the_final_status(factory):
    job_id = _new(factory)
    warnings = ["the teacher finds only 1 of the 2 classes among 512 prior samples"]
    with session_scope(factory) as session:
        repo.claim(session, job_id, "w1", lease_seconds=30, max_attempts=3)
        assert repo.finish(session, job_id, "w1", repo.SUCCEEDED, metrics={"quality": {}, "warnings": warnings})
    with session_scope(factory) as session:
        events, _ = repo.list_events(session, job_id)
        kinds = [(e.kind, e.message) for e in events][-2:]
    assert kinds == [("warning", warnings[0]), ("status", "job succeeded")]
    assert _job(factory, job_id).metrics["warnings"] == warnings


def test_cancel_is_idempotent_queued_and_running(factory):
    queued = _new(factory)
    with session_scope(factory) as session:
        assert repo.request_cancel(session, queued).status == "cancelled"
        assert repo.request_cancel(session, queued).status == "cancelled"
        assert repo.claim(session, queued, "w1", 30, 3) is None  # a cancelled job is never started
    running = _new(factory)
    with session_scope(factory) as session:
        repo.claim(session, running, "w1", 30, 3)
        assert repo.request_cancel(session, running).status == "cancelling"
        assert repo.request_cancel(session, running).status == "cancelling"
        assert repo.current_status(session, running, "w1") == "cancelling"
        assert repo.finish(session, running, "w1", repo.CANCELLED)
    assert _job(factory, running).status == "cancelled"


def test_cancelling_a_finished_job_is_a_conflict(factory):
    job_id = _new(factory)
    with session_scope(factory) as session:
        repo.claim(session, job_id, "w1", 30, 3)
        repo.finish(session, job_id, "w1", repo.FAILED, code="boom", message="failed")
    with session_scope(factory) as session, pytest.raises(ServiceError) as error:
        repo.request_cancel(session, job_id)
    assert error.value.code == "job_finished" and error.value.http_status == 409


def test_reaper_requeues_then_fails_a_job_whose_worker_keeps_dying(factory):
    job_id = _new(factory)
    for attempt in (1, 2):
        with session_scope(factory) as session:
            assert repo.claim(session, job_id, f"w{attempt}", lease_seconds=30, max_attempts=2).attempts == attempt
        with session_scope(factory) as session:
            assert repo.reap_expired(session, 2).requeued == []  # the lease is still live
            result = repo.reap_expired(session, 2, now=utcnow() + timedelta(seconds=31))
        if attempt == 1:
            assert result.requeued == [job_id]
            job = _job(factory, job_id)
            assert job.status == "queued" and job.lease_owner is None and job.progress == 0
            with session_scope(factory) as session:
                assert repo.renew_lease(session, job_id, "w1", 30) is None  # the dead worker's lease is gone
        else:
            assert result.failed == [job_id]
    job = _job(factory, job_id)
    assert job.status == "failed" and job.error_code == "worker_lost"


def test_a_lapsed_lease_lets_a_redelivered_message_restart_the_job(factory):
    job_id = _new(factory)
    with session_scope(factory) as session:
        repo.claim(session, job_id, "w1", lease_seconds=0.01, max_attempts=3)
    import time

    time.sleep(0.05)
    with session_scope(factory) as session:
        job = repo.claim(session, job_id, "w2", 30, 3)
    assert job is not None and job.lease_owner == "w2" and job.attempts == 2


def test_pages_of_jobs_and_events(factory):
    ids = [_new(factory) for _ in range(7)]
    with session_scope(factory) as session:
        repo.request_cancel(session, ids[0])
        seen, after = [], None
        while True:
            page, has_more = repo.list_jobs(session, after=after, limit=3)
            seen += [j.id for j in page]
            if not has_more:
                break
            after = page[-1].id
        assert seen == list(reversed(ids))  # newest first, each once
        cancelled, more = repo.list_jobs(session, status="cancelled", limit=10)
        assert [j.id for j in cancelled] == [ids[0]] and not more
        events, more = repo.list_events(session, ids[0], limit=1)
        assert [e.status for e in events] == ["queued"] and more
        rest, more = repo.list_events(session, ids[0], after=events[0].id)
        assert [e.status for e in rest] == ["cancelled"] and not more


def _all_pages(session, limit: int) -> list[str]:
    seen, after = [], None
    while True:
        page, has_more = repo.list_jobs(session, after=after, limit=limit)
        seen += [j.id for j in page]
        if not has_more:
            return seen
        after = page[-1].id


def test_ids_keep_creation_order_within_a_millisecond_and_when_the_clock_steps_back():
    times = iter([1.0, 1.0, 1.0, 0.5, 0.5, 2.0])  # seconds: three in one millisecond, then the clock goes back
    ids = MonotonicIds(clock=lambda: next(times))
    made = [ids.new("job") for _ in range(6)]
    assert made == sorted(made) and len(set(made)) == 6


def test_jobs_created_in_a_tight_loop_list_newest_first_each_once(factory):
    ids = [_new(factory) for _ in range(300)]  # many share a millisecond
    with session_scope(factory) as session:
        assert _all_pages(session, limit=37) == list(reversed(ids))


CREATE_JOBS = """
import sys
from service import jobs as repo
from service.db import make_engine, make_session_factory, session_scope
from service.ids import new_id
factory = make_session_factory(make_engine(sys.argv[1]))
spec = {"teacher": "shapes-mini", "classes": [{"name": "a"}, {"name": "b"}], "seed": 7}
for _ in range(int(sys.argv[2])):
    job_id = new_id("job")
    with session_scope(factory) as session:
        repo.create_job(session, job_id=job_id, spec=spec)
    print(job_id, flush=True)
"""


def test_jobs_created_by_two_processes_at_once_are_each_listed_once_in_each_processs_order(factory):
    import subprocess
    import sys

    url = factory.kw["bind"].url.render_as_string(hide_password=False)
    writers = [
        subprocess.Popen([sys.executable, "-c", CREATE_JOBS, url, "150"], stdout=subprocess.PIPE, text=True, cwd=REPO) for _ in range(2)
    ]
    created = []
    for writer in writers:
        out, _ = writer.communicate(timeout=240)
        assert writer.returncode == 0
        created.append(out.split())
    with session_scope(factory) as session:
        listed = _all_pages(session, limit=50)
    assert sorted(listed) == sorted(created[0] + created[1]) and len(set(listed)) == 300
    for ids in created:  # newest first within each writer
        assert [i for i in listed if i in set(ids)] == list(reversed(ids))


def test_delete_removes_rows_and_files_but_not_a_running_job(factory, tmp_path):
    storage = LocalStorage(tmp_path / "s")
    upload = repo.NewUpload("a", 0, "a.png", "image/png", 1, 1, storage.put(upload_key("job_x", "upl_1"), b"png"), "upl_1")
    with session_scope(factory) as session:
        repo.create_job(session, job_id="job_x", spec=SPEC, uploads=[upload])
    storage.put(artifact_key("job_x", "student.onnx"), b"onnx")
    with session_scope(factory) as session:
        repo.claim(session, "job_x", "w1", 30, 3)
    with session_scope(factory) as session, pytest.raises(ServiceError) as error:
        repo.delete_job(session, "job_x")
    assert error.value.code == "job_active"
    with session_scope(factory) as session:
        repo.finish(session, "job_x", "w1", repo.FAILED, code="x", message="x")
    with session_scope(factory) as session:
        prefixes = repo.delete_job(session, "job_x")
    assert storage.exists(upload_key("job_x", "upl_1"))  # files go only after the commit
    for prefix in prefixes:
        storage.delete_prefix(prefix)
    with session_scope(factory) as session, pytest.raises(ServiceError):
        repo.get_job(session, "job_x")
    assert not (tmp_path / "s" / "uploads" / "job_x").exists() and not (tmp_path / "s" / "artifacts" / "job_x").exists()


def test_idempotency_key_is_unique(factory):
    job_id = _new(factory, idempotency_key="k1", request_hash="h1")
    with session_scope(factory) as session:
        assert repo.find_by_idempotency_key(session, "k1").id == job_id
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError):
        _new(factory, idempotency_key="k1", request_hash="h2")


def test_two_messages_for_one_queued_job_run_it_once(factory):
    """The outbox may publish a job twice (the API's publish and the reaper's): the claim is a compare-and-set, so the
    workers that receive the two messages at the same moment start it once, and a late duplicate is dropped."""
    import threading

    job_id = _new(factory)
    barrier = threading.Barrier(2)
    claimed: dict[str, bool] = {}

    def deliver(owner: str) -> None:
        with session_scope(factory) as session:
            barrier.wait()
            claimed[owner] = repo.claim(session, job_id, owner, lease_seconds=30, max_attempts=3) is not None

    threads = [threading.Thread(target=deliver, args=(owner,)) for owner in ("w1", "w2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(claimed.values()) == [False, True]
    [winner] = [owner for owner, won in claimed.items() if won]
    job = _job(factory, job_id)
    assert job.attempts == 1 and job.lease_owner == winner and job.publish_due_at is None
    with session_scope(factory) as session:
        assert repo.finish(session, job_id, winner, repo.SUCCEEDED)
        assert repo.claim(session, job_id, "w3", 30, 3) is None  # a duplicate after the run: dropped, the job stays done
        events, _ = repo.list_events(session, job_id)
    assert [e.status for e in events if e.kind == "status"] == ["queued", "running", "succeeded"]
    assert _job(factory, job_id).attempts == 1
