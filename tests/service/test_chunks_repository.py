"""A split job's chunks (service.chunks) on SQLite and PostgreSQL migrated by Alembic: the split, the claims and leases,
the join's one finisher, the distillation's claim, the reaper per chunk, cancellation and deletion."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from service import chunks
from service import jobs as repo
from service.db import session_scope
from service.models import Job, JobChunk, utcnow
from service.storage import LocalStorage
from tests.service.test_jobs_repository import SPEC, _job, _new, factory  # noqa: F401  (the database fixture)

PLAN = [[0, 1], [2, 3], [4]]
LEASE = 30.0


def _split(factory, plan=PLAN) -> str:  # noqa: F811
    job_id = _new(factory)
    with session_scope(factory) as session:
        repo.claim(session, job_id, "w0", LEASE, 3)
    with session_scope(factory) as session:
        assert chunks.split(session, job_id, "w0", plan, progress=0.05, publish_grace_seconds=10)
    return job_id


def _claim(factory, job_id, index, owner, max_attempts=3):  # noqa: F811
    with session_scope(factory) as session:
        return chunks.claim(session, job_id, index, owner, LEASE, max_attempts)


def _complete(factory, job_id, index, owner, tmp_path):  # noqa: F811
    stored = LocalStorage(tmp_path / "s").put(chunks.chunk_key(job_id, index, owner), b"chunk")
    with session_scope(factory) as session:
        return chunks.complete(session, job_id, index, owner, stored, job_progress=0.1, publish_grace_seconds=0)


def _chunk_rows(factory, job_id):  # noqa: F811
    with session_scope(factory) as session:
        return {c.chunk_index: c for c in session.query(JobChunk).filter(JobChunk.job_id == job_id)}


def test_a_split_job_gives_its_lease_up_and_queues_one_flagged_chunk_each(factory):  # noqa: F811
    job_id = _split(factory)
    job = _job(factory, job_id)
    assert job.status == "running" and job.stage == "synthesizing" and job.synthesis_chunks == 3 and job.lease_owner is None
    rows = _chunk_rows(factory, job_id)
    assert [(r.first_batch, r.batch_count, r.status) for r in rows.values()] == [(0, 2, "queued"), (2, 2, "queued"), (4, 1, "queued")]
    with session_scope(factory) as session:
        flags = chunks.publication_flags(session, job_id)
        assert [index for index, _ in flags] == [0, 1, 2]
        assert chunks.unpublished(session, due_by=utcnow()) == []  # the splitter publishes them within the grace period
        assert [i for _, i, _ in chunks.unpublished(session, due_by=utcnow() + timedelta(seconds=11))] == [0, 1, 2]
        assert chunks.mark_published(session, job_id, 0, flags[0][1])
        assert repo.claim(session, job_id, "w9", LEASE, 3) is None  # a duplicate run_job message leaves a split job alone
        assert not chunks.split(session, job_id, "w0", PLAN, progress=0.05, publish_grace_seconds=0)  # no lease: no second split


def test_chunks_run_once_each_and_exactly_one_completion_queues_the_distillation(factory, tmp_path):  # noqa: F811
    job_id = _split(factory)
    outcome, task = _claim(factory, job_id, 0, "w1")
    assert outcome == chunks.CLAIMED and task.batches == [0, 1] and task.attempt == 1 and task.spec["seed"] == 7
    assert _claim(factory, job_id, 0, "w2") == (chunks.SKIPPED, None)  # leased to a live worker: a duplicate message
    with session_scope(factory) as session:
        assert chunks.state(session, job_id, 0, "w1") == "running" and chunks.state(session, job_id, 0, "w2") is None
        assert chunks.renew_lease(session, job_id, 0, "w1", LEASE) and not chunks.renew_lease(session, job_id, 0, "w2", LEASE)
        assert chunks.record_progress(session, job_id, 0, "w1", 0.5, lambda f: 0.05 + 0.5 * f)
        assert chunks.synthesis_fraction(session, job_id) == pytest.approx(0.5 * 2 / 5)
    assert _job(factory, job_id).progress == pytest.approx(0.05 + 0.5 * 0.2)
    first = _complete(factory, job_id, 0, "w1", tmp_path)
    assert first.accepted and first.distill_due_at is None
    assert not _complete(factory, job_id, 0, "w1", tmp_path).accepted  # done already: a late duplicate is refused
    with session_scope(factory) as session:
        assert chunks.claim_distillation(session, job_id, "d1", LEASE) == (chunks.SKIPPED, None)  # two chunks to go

    # The last two chunks end at the same moment in two workers: one of them, and only one, is the finisher.
    for index, owner in ((1, "w2"), (2, "w3")):
        assert _claim(factory, job_id, index, owner)[0] == chunks.CLAIMED
    barrier = threading.Barrier(2)
    completions = {}

    def finish(index: int, owner: str) -> None:
        stored = LocalStorage(tmp_path / "s").put(chunks.chunk_key(job_id, index, owner), b"chunk")
        with session_scope(factory) as session:
            barrier.wait()
            completions[index] = chunks.complete(session, job_id, index, owner, stored, job_progress=0.3, publish_grace_seconds=0)

    threads = [threading.Thread(target=finish, args=args) for args in ((1, "w2"), (2, "w3"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(c.accepted for c in completions.values())
    assert sum(c.distill_due_at is not None for c in completions.values()) == 1
    with session_scope(factory) as session:
        [(flagged, _)] = chunks.unpublished_distillations(session, due_by=utcnow())
        assert flagged == job_id
        outcome, distillation = chunks.claim_distillation(session, job_id, "d1", LEASE)
    assert outcome == chunks.CLAIMED and [c.index for c in distillation.chunks] == [0, 1, 2] and distillation.workers == 3
    assert chunks.worker_process("host:41:4f2a") == "host:41"  # one process's runs count as one worker
    assert set(distillation.stage_seconds) == {"preparing", "synthesizing"}
    job = _job(factory, job_id)
    assert job.lease_owner == "d1" and job.publish_due_at is None and job.attempts == 1
    with session_scope(factory) as session:
        assert chunks.claim_distillation(session, job_id, "d2", LEASE) == (chunks.SKIPPED, None)  # a duplicate message
        assert repo.finish(session, job_id, "d1", repo.SUCCEEDED)


def test_a_chunk_whose_worker_dies_goes_back_alone_then_fails_the_job_after_max_attempts(factory, tmp_path):  # noqa: F811
    job_id = _split(factory)
    assert _claim(factory, job_id, 1, "w1")[0] == chunks.CLAIMED
    assert _complete(factory, job_id, 0, "w9", tmp_path).accepted is False  # never claimed by w9
    later = utcnow() + timedelta(seconds=LEASE + 1)
    with session_scope(factory) as session:
        assert chunks.reap_expired(session, 2).requeued == []  # the lease is live
        reaped = chunks.reap_expired(session, 2, now=later, publish_grace_seconds=0)
    assert reaped.requeued == [(job_id, 1)] and reaped.ended == []
    rows = _chunk_rows(factory, job_id)
    assert rows[1].status == "queued" and rows[1].lease_owner is None and rows[1].publish_due_at is not None
    assert rows[0].status == "queued" and _job(factory, job_id).status == "running"  # the others are untouched
    with session_scope(factory) as session:
        assert not chunks.renew_lease(session, job_id, 1, "w1", LEASE)  # the dead worker's lease is gone
        assert [(j, i) for j, i, _ in chunks.unpublished(session, due_by=utcnow(), including=reaped.requeued)] == [(job_id, 1)]
        events, _ = repo.list_events(session, job_id)
    assert any(e.kind == "warning" and "chunk 1" in e.message for e in events)
    assert _claim(factory, job_id, 1, "w2", max_attempts=2)[1].attempt == 2
    with session_scope(factory) as session:
        reaped = chunks.reap_expired(session, 2, now=later + timedelta(seconds=LEASE + 1))
    assert reaped.ended == [job_id]
    job = _job(factory, job_id)
    assert job.status == "failed" and job.error_code == "worker_lost" and job.lease_owner is None
    assert {r.status for r in _chunk_rows(factory, job_id).values()} == {"cancelled"}
    with session_scope(factory) as session:
        assert repo.counters(session)["chunks_requeued"] == 1


def test_cancelling_stops_the_chunks_and_the_last_one_out_ends_the_job(factory, tmp_path):  # noqa: F811
    job_id = _split(factory)
    for index, owner in ((0, "w1"), (1, "w2")):
        assert _claim(factory, job_id, index, owner)[0] == chunks.CLAIMED
    with session_scope(factory) as session:
        assert repo.request_cancel(session, job_id).status == "cancelling"
        assert chunks.state(session, job_id, 0, "w1") == "cancelling"
    assert _claim(factory, job_id, 2, "w3") == (chunks.SKIPPED, None)  # a queued chunk of a cancelling job never starts
    assert _chunk_rows(factory, job_id)[2].status == "cancelled"
    with session_scope(factory) as session:
        assert not chunks.stop(session, job_id, 0, "w1")  # chunk 1 still runs: the job waits for it
    assert _job(factory, job_id).status == "cancelling"
    done = _complete(factory, job_id, 1, "w2", tmp_path)  # it ended just then: it is the last one out
    assert done.accepted and done.ended and done.distill_due_at is None
    job = _job(factory, job_id)
    assert job.status == "cancelled" and job.publish_due_at is None
    with session_scope(factory) as session:
        assert chunks.claim_distillation(session, job_id, "d1", LEASE) == (chunks.SKIPPED, None)


def test_a_cancelled_split_job_with_nothing_running_is_ended_by_the_reaper(factory):  # noqa: F811
    job_id = _split(factory)
    with session_scope(factory) as session:
        repo.request_cancel(session, job_id)
        assert chunks.reap_expired(session, 3).ended == [job_id]
    assert _job(factory, job_id).status == "cancelled"


def test_a_failing_chunk_fails_the_job_and_a_straggler_cannot_complete(factory, tmp_path):  # noqa: F811
    job_id = _split(factory)
    for index, owner in ((0, "w1"), (1, "w2")):
        _claim(factory, job_id, index, owner)
    with session_scope(factory) as session:
        assert chunks.stop(session, job_id, 0, "w1", code="storage_full", message="no space")
    job = _job(factory, job_id)
    assert job.status == "failed" and job.error_code == "storage_full"
    with session_scope(factory) as session:
        assert chunks.state(session, job_id, 1, "w2") is None  # its worker stops at its next check
    assert not _complete(factory, job_id, 1, "w2", tmp_path).accepted  # and removes the file it wrote


def test_a_lost_distillation_goes_back_alone_with_its_attempt_counted(factory, tmp_path):  # noqa: F811
    job_id = _split(factory, [[0], [1]])
    for index in (0, 1):
        _claim(factory, job_id, index, f"w{index}")
        _complete(factory, job_id, index, f"w{index}", tmp_path)
    with session_scope(factory) as session:
        assert chunks.claim_distillation(session, job_id, "d1", LEASE)[0] == chunks.CLAIMED
        result = repo.reap_expired(session, 3, now=utcnow() + timedelta(seconds=LEASE + 1), publish_grace_seconds=0)
    assert result.distillations == [job_id] and result.requeued == []
    job = _job(factory, job_id)
    assert job.status == "running" and job.lease_owner is None and job.attempts == 2 and job.publish_due_at is not None
    assert {r.status for r in _chunk_rows(factory, job_id).values()} == {"done"}  # the chunks are kept
    with session_scope(factory) as session:
        assert chunks.claim_distillation(session, job_id, "d2", LEASE)[0] == chunks.CLAIMED


def test_deleting_a_finished_split_job_removes_its_chunk_rows(factory):  # noqa: F811
    job_id = _split(factory)
    with session_scope(factory) as session:
        repo.request_cancel(session, job_id)
        chunks.reap_expired(session, 3)
    with session_scope(factory) as session:
        assert "artifacts/" + job_id in repo.delete_job(session, job_id)
    assert _chunk_rows(factory, job_id) == {}
    with session_scope(factory) as session:
        assert session.get(Job, job_id) is None
