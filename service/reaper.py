"""The lease reaper and the outbox's publisher. Jobs whose worker stopped renewing its lease go back to the queue (or
end); queued jobs whose message may be missing (``publish_due_at`` passed: their publisher died after the commit, or the
broker refused the message) are published. The API and every worker run it, so that a job never stays ``running``
without a live worker, nor ``queued`` without a message, even when no worker is left."""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from service import evaluations
from service import jobs as repo
from service.db import session_scope
from service.models import utcnow
from service.queue import enqueue_evaluation, enqueue_job, ping_broker
from service.settings import Settings

log = logging.getLogger("clipforge.reaper")


def publish_job(celery: Celery, settings: Settings, factory: sessionmaker[Session], job_id: str, publish_due_at: datetime) -> bool:
    """The outbox's one publishing step: send the job's message, then clear its flag (only if still the one read,
    ``publish_due_at``). BrokerUnavailable when the broker cannot take it (the flag stays, for a later round). Clearing
    is best effort: a flag left set (the database briefly away) makes a later round send a second message, which the
    worker's claim drops. True when the flag was cleared."""
    enqueue_job(celery, settings, job_id)
    try:
        with session_scope(factory) as session:
            return repo.mark_published(session, job_id, publish_due_at)
    except Exception:
        log.exception("job %s: published, but its outbox flag could not be cleared", job_id)
        return False


def publish_evaluation(
    celery: Celery, settings: Settings, factory: sessionmaker[Session], evaluation_id: str, publish_due_at: datetime
) -> bool:
    """``publish_job`` for an evaluation: send its message, then clear its outbox flag if still the one read."""
    enqueue_evaluation(celery, settings, evaluation_id)
    try:
        with session_scope(factory) as session:
            return evaluations.mark_published(session, evaluation_id, publish_due_at)
    except Exception:
        log.exception("evaluation %s: published, but its outbox flag could not be cleared", evaluation_id)
        return False


def reap_once(settings: Settings, factory: sessionmaker[Session], celery: Celery) -> repo.ReapResult:
    """One round: requeue expired jobs, then publish the requeued ones and every queued job whose publication is overdue.

    Raises BrokerUnavailable when the broker is down: nothing is requeued then (the jobs stay expired until it is back),
    and a failed publication leaves the job's flag set in the database, so that a later round, here or in any other
    process, publishes it.
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
    return result


def start_reaper(settings: Settings, factory: sessionmaker[Session], celery: Celery) -> threading.Event:
    """A daemon thread reaping every ``reaper_interval_seconds``; set the returned event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        while True:
            try:
                reap_once(settings, factory, celery)
            except Exception:  # the database or broker is briefly away: try again next round
                log.exception("reaper round failed")
            if stop.wait(settings.reaper_interval_seconds):
                return

    threading.Thread(target=loop, name="lease-reaper", daemon=True).start()
    return stop
