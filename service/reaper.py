"""The lease reaper: jobs whose worker stopped renewing its lease go back to the queue (or end). The API and every
worker run it, so that a job never stays ``running`` without a live worker, even when no worker is left."""

from __future__ import annotations

import logging
import threading

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from service import jobs as repo
from service.db import session_scope
from service.queue import enqueue_job
from service.settings import Settings

log = logging.getLogger("clipforge.reaper")


def reap_once(settings: Settings, factory: sessionmaker[Session], celery: Celery) -> repo.ReapResult:
    with session_scope(factory) as session:
        result = repo.reap_expired(session, settings.max_attempts)
    for job_id in result.requeued:
        log.warning("job %s: its worker's lease expired; requeued", job_id)
        enqueue_job(celery, settings, job_id)
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
