"""The lease reaper and the outbox's publisher. Jobs whose worker stopped renewing its lease go back to the queue (or
end); queued jobs whose message may be missing (``publish_due_at`` passed: their publisher died after the commit, or the
broker refused the message) are published. The API and every worker run it, so that a job never stays ``running``
without a live worker, nor ``queued`` without a message, even when no worker is left. The chunks of split jobs get the
same care one by one (service.chunks), and so do the distillations their last chunk queued."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from service import chunks, evaluations
from service import jobs as repo
from service.db import session_scope
from service.models import utcnow
from service.queue import enqueue_chunks, enqueue_distillation, enqueue_evaluation, enqueue_job, ping_broker
from service.settings import Settings
from service.storage import Storage

log = logging.getLogger("clipforge.reaper")


def publish(factory: sessionmaker[Session], send: Callable[[], None], clear: Callable[[Session], bool], what: str) -> bool:
    """The outbox's one publishing step: ``send`` the message, then ``clear`` its flag (only if still the one read).
    BrokerUnavailable when the broker cannot take it (the flag stays, for a later round). Clearing is best effort: a flag
    left set (the database briefly away) makes a later round send a second message, which the claim drops. True when
    the flag was cleared."""
    send()
    try:
        with session_scope(factory) as session:
            return clear(session)
    except Exception:
        log.exception("%s: published, but its outbox flag could not be cleared", what)
        return False


def publish_job(celery: Celery, settings: Settings, factory: sessionmaker[Session], job_id: str, publish_due_at: datetime) -> bool:
    return publish(
        factory,
        lambda: enqueue_job(celery, settings, job_id),
        lambda session: repo.mark_published(session, job_id, publish_due_at),
        f"job {job_id}",
    )


def publish_evaluation(
    celery: Celery, settings: Settings, factory: sessionmaker[Session], evaluation_id: str, publish_due_at: datetime
) -> bool:
    return publish(
        factory,
        lambda: enqueue_evaluation(celery, settings, evaluation_id),
        lambda session: evaluations.mark_published(session, evaluation_id, publish_due_at),
        f"evaluation {evaluation_id}",
    )


def publish_chunk(
    celery: Celery, settings: Settings, factory: sessionmaker[Session], job_id: str, index: int, publish_due_at: datetime
) -> bool:
    return publish(
        factory,
        lambda: enqueue_chunks(celery, settings, job_id, [index]),
        lambda session: chunks.mark_published(session, job_id, index, publish_due_at),
        f"job {job_id}: chunk {index}",
    )


def publish_distillation(celery: Celery, settings: Settings, factory: sessionmaker[Session], job_id: str, publish_due_at: datetime) -> bool:
    """A split job's distillation: its flag is the job's own (``publish_due_at``)."""
    return publish(
        factory,
        lambda: enqueue_distillation(celery, settings, job_id),
        lambda session: repo.mark_published(session, job_id, publish_due_at),
        f"job {job_id}: distillation",
    )


def reap_once(settings: Settings, factory: sessionmaker[Session], celery: Celery, storage: Storage | None = None) -> repo.ReapResult:
    """One round: requeue expired jobs, then publish the requeued ones and every queued job whose publication is overdue.

    Raises BrokerUnavailable when the broker is down: nothing is requeued then (the jobs stay expired until it is back),
    and a failed publication leaves the job's flag set in the database, so that a later round, here or in any other
    process, publishes it. ``storage``: where the chunk files of split jobs that this round ends are removed.
    """
    ping_broker(celery)
    with session_scope(factory) as session:
        result = repo.reap_expired(session, settings.max_attempts, publish_grace_seconds=settings.publish_grace_seconds)
    for job_id in result.requeued:
        log.warning("job %s: its worker's lease expired; requeued", job_id)
    with session_scope(factory) as session:
        pending = repo.unpublished_jobs(session, due_by=utcnow(), including=result.requeued)
    for job_id, due_at in pending:
        publish_job(celery, settings, factory, job_id, due_at)
        if job_id not in result.requeued:
            log.warning("job %s: queued with no confirmed message since %s; published", job_id, due_at.isoformat())
        result.published.append(job_id)
    # Evaluations the same way: a lapsed lease queues them again; a flag past its time is published.
    with session_scope(factory) as session:
        requeued = evaluations.reap_expired(session, settings.max_attempts, publish_grace_seconds=settings.publish_grace_seconds)
    with session_scope(factory) as session:
        pending = evaluations.unpublished(session, due_by=utcnow(), including=requeued)
    for evaluation_id, due_at in pending:
        publish_evaluation(celery, settings, factory, evaluation_id, due_at)
        log.warning("evaluation %s: %s; published", evaluation_id, "requeued" if evaluation_id in requeued else "no confirmed message")
        result.published.append(evaluation_id)
    _reap_split_jobs(settings, factory, celery, storage, result)
    return result


def _reap_split_jobs(
    settings: Settings, factory: sessionmaker[Session], celery: Celery, storage: Storage | None, result: repo.ReapResult
) -> None:
    """Split jobs: a chunk whose worker's lease lapsed goes back alone (or fails its job), a cancelling job that nothing
    runs any more ends; flagged chunks and distillations are published; ended jobs lose their chunk files."""
    with session_scope(factory) as session:
        reaped = chunks.reap_expired(session, settings.max_attempts, publish_grace_seconds=settings.publish_grace_seconds)
    for job_id, index in reaped.requeued:
        log.warning("job %s: chunk %d's worker lost its lease; chunk requeued", job_id, index)
    if storage is not None:
        # A failed or cancelled split job keeps nothing of its chunks (ids of unsplit jobs cost a listing that finds none).
        for job_id in {*reaped.ended, *result.failed, *result.cancelled}:
            storage.delete_prefix(chunks.chunks_prefix(job_id))
    with session_scope(factory) as session:
        pending_chunks = chunks.unpublished(session, due_by=utcnow(), including=reaped.requeued)
    for job_id, index, due_at in pending_chunks:
        publish_chunk(celery, settings, factory, job_id, index, due_at)
        if (job_id, index) not in reaped.requeued:
            log.warning("job %s: chunk %d queued with no confirmed message since %s; published", job_id, index, due_at.isoformat())
        result.published.append(f"{job_id}/{index}")
    for job_id in result.distillations:
        log.warning("job %s: its distillation's worker lost its lease; distillation requeued", job_id)
    with session_scope(factory) as session:
        pending = chunks.unpublished_distillations(session, due_by=utcnow(), including=result.distillations)
    for job_id, due_at in pending:
        publish_distillation(celery, settings, factory, job_id, due_at)
        if job_id not in result.distillations:
            log.warning("job %s: distillation queued with no confirmed message since %s; published", job_id, due_at.isoformat())
        result.published.append(job_id)


def start_reaper(settings: Settings, factory: sessionmaker[Session], celery: Celery, storage: Storage | None = None) -> threading.Event:
    """A daemon thread reaping every ``reaper_interval_seconds``; set the returned event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        while True:
            try:
                reap_once(settings, factory, celery, storage)
            except Exception:  # the database or broker is briefly away: try again next round
                log.exception("reaper round failed")
            if stop.wait(settings.reaper_interval_seconds):
                return

    threading.Thread(target=loop, name="lease-reaper", daemon=True).start()
    return stop
