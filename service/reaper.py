"""The lease reaper: jobs whose worker stopped renewing its lease go back to the queue (or end). The API and every
worker run it, so that a job never stays ``running`` without a live worker, even when no worker is left."""

from __future__ import annotations

import logging
import threading

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from service import jobs as repo
from service.db import session_scope
from service.queue import enqueue_job, ping_broker
from service.settings import Settings

log = logging.getLogger("clipforge.reaper")


def reap_once(settings: Settings, factory: sessionmaker[Session], celery: Celery, unpublished: set[str] | None = None) -> repo.ReapResult:
    """Requeue expired jobs and publish their messages. Nothing is requeued while the broker is down (the jobs stay
    expired until it is back); a requeued job whose publication still fails is kept in ``unpublished`` and retried."""
    unpublished = set() if unpublished is None else unpublished
    ping_broker(celery)
    for job_id in sorted(unpublished):
        enqueue_job(celery, settings, job_id)
        unpublished.discard(job_id)
    with session_scope(factory) as session:
        result = repo.reap_expired(session, settings.max_attempts)
    unpublished.update(result.requeued)
    for job_id in result.requeued:
        log.warning("job %s: its worker's lease expired; requeued", job_id)
        enqueue_job(celery, settings, job_id)
        unpublished.discard(job_id)
    return result


def start_reaper(settings: Settings, factory: sessionmaker[Session], celery: Celery) -> threading.Event:
    """A daemon thread reaping every ``reaper_interval_seconds``; set the returned event to stop it."""
    stop = threading.Event()
    unpublished: set[str] = set()

    def loop() -> None:
        while True:
            try:
                reap_once(settings, factory, celery, unpublished)
            except Exception:  # the database or broker is briefly away: try again next round
                log.exception("reaper round failed")
            if stop.wait(settings.reaper_interval_seconds):
                return

    threading.Thread(target=loop, name="lease-reaper", daemon=True).start()
    return stop
