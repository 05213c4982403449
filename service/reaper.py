"""The lease reaper and the outbox's publisher. Jobs whose worker stopped renewing its lease go back to the queue (or
end); queued jobs whose message may be missing (``publish_due_at`` passed: their publisher died after the commit, or the
broker refused the message) are published. The API and every worker run it, so that a job never stays ``running``
without a live worker, nor ``queued`` without a message, even when no worker is left. The chunks of split jobs get the
same care one by one (service.chunks), and so do the distillations their last chunk queued, evaluations and the pool
embeddings asked for at a pool's creation (service.pool_embeddings)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from service import chunks, evaluations, pool_embeddings
from service import jobs as repo
from service.db import session_scope
from service.leases import Key
from service.models import utcnow
from service.outbox import CHUNK, DISTILLATION, EVALUATION, JOB, POOL_EMBEDDING, Outbox
from service.queue import ping_broker
from service.settings import Settings
from service.storage import Storage

log = logging.getLogger("clipforge.reaper")

# One round's reaping of one kind of row: in the caller's transaction, the keys of the rows it queued again (flagged,
# so that the round publishes them at once).
Reap = Callable[[Session], list[Key]]


def reap_once(settings: Settings, factory: sessionmaker[Session], celery: Celery, storage: Storage | None = None) -> repo.ReapResult:
    """One round, kind by kind (jobs, evaluations, chunks of split jobs, their distillations, pool embeddings): the rows whose worker's
    lease expired are queued again (or ended), then those and every row whose publication is overdue are published.

    Raises BrokerUnavailable when the broker is down: nothing is requeued then (the rows stay expired until it is back),
    and a failed publication leaves the row's flag set in the database, so that a later round, here or in any other
    process, publishes it. ``storage``: where the chunk files of split jobs that this round ends are removed.
    """
    ping_broker(celery)
    result = repo.ReapResult([], [], [])
    grace = settings.publish_grace_seconds

    def reap_jobs(session: Session) -> list[Key]:
        reaped = repo.reap_expired(session, settings.max_attempts, publish_grace_seconds=grace)
        for job_id in repo.warn_stalled(session, utcnow(), settings.stall_after_seconds):
            log.warning("job %s: its worker missed its heartbeats", job_id)
        for mine, theirs in ((result.requeued, reaped.requeued), (result.failed, reaped.failed), (result.cancelled, reaped.cancelled),
                             (result.distillations, reaped.distillations)):  # fmt: skip
            mine.extend(theirs)
        return [(job_id,) for job_id in reaped.requeued]

    def reap_evaluations(session: Session) -> list[Key]:
        return [(evaluation_id,) for evaluation_id in evaluations.reap_expired(session, settings.max_attempts, publish_grace_seconds=grace)]

    def reap_pool_embeddings(session: Session) -> list[Key]:
        return [(e,) for e in pool_embeddings.reap_expired(session, settings.max_attempts, publish_grace_seconds=grace)]

    def reap_chunks(session: Session) -> list[Key]:
        reaped = chunks.reap_expired(session, settings.max_attempts, publish_grace_seconds=grace)
        ended.extend({*reaped.ended, *result.failed, *result.cancelled})
        return list(reaped.requeued)

    def requeued_distillations(_: Session) -> list[Key]:  # the jobs' round queued them again
        return [(job_id,) for job_id in result.distillations]

    ended: list[str] = []  # jobs whose chunk files go: a failed or cancelled split job keeps nothing of its chunks
    rounds: list[tuple[Outbox, Reap]] = [(JOB, reap_jobs), (EVALUATION, reap_evaluations), (CHUNK, reap_chunks),
                                         (DISTILLATION, requeued_distillations), (POOL_EMBEDDING, reap_pool_embeddings)]  # fmt: skip
    for outbox, reap in rounds:
        with session_scope(factory) as session:
            requeued = reap(session)
        for key in requeued:
            log.warning("%s: its worker's lease expired; requeued", outbox.label(key))
        if storage is not None:
            for job_id in ended:  # ids of unsplit jobs cost a listing that finds nothing
                storage.delete_prefix(chunks.chunks_prefix(job_id))
            ended.clear()
        with session_scope(factory) as session:
            pending = outbox.pending(session, utcnow(), requeued)
        for key, due_at in pending:
            outbox.publish(celery, settings, factory, key, due_at)
            if key not in requeued:
                log.warning("%s: queued with no confirmed message since %s; published", outbox.label(key), due_at.isoformat())
            result.published.append("/".join(str(part) for part in key))
    return result


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
