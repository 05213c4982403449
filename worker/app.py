"""The worker's Celery app: ``create_worker_app(settings)`` registers the job task on ``service.queue.create_celery``'s
config, and ``run_worker`` starts a worker (one job at a time) with the lease reaper beside it."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, make_session_factory, migrate
from service.queue import RUN_EVALUATION_TASK, RUN_JOB_TASK, create_celery
from service.reaper import start_reaper
from service.settings import Settings
from service.storage import create_storage
from worker.evaluation import EvaluationRunner
from worker.runner import JobRunner

log = logging.getLogger("clipforge.worker")


@dataclass
class WorkerContext:
    settings: Settings
    celery: Celery
    factory: sessionmaker[Session]
    runner: JobRunner


def create_worker_app(settings: Settings) -> WorkerContext:
    celery = create_celery(settings)
    factory = make_session_factory(make_engine(settings.database_url))
    storage = create_storage(settings)
    runner = JobRunner(settings, factory, storage)
    evaluator = EvaluationRunner(settings, factory, storage)

    @celery.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def run_job(job_id: str) -> str:
        return runner.run(job_id).status

    @celery.task(name=RUN_EVALUATION_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def run_evaluation(evaluation_id: str) -> str:
        return evaluator.run(evaluation_id)

    return WorkerContext(settings, celery, factory, runner)


def run_worker(settings: Settings, queues: list[str] | None = None, loglevel: str = "INFO") -> None:
    """A blocking worker: solo pool (the job runs in this process, one at a time), prefetch 1, the lease reaper beside it."""
    if settings.worker_nice:
        os.nice(settings.worker_nice)  # relative to the parent's niceness; this process and its threads
    settings.ensure_local_dirs()
    if settings.migrate_on_start:
        migrate(settings.database_url)
    context = create_worker_app(settings)
    stop_reaper = start_reaper(settings, context.factory, context.celery)
    name = f"clipforge-{settings.device.replace(':', '')}@{socket.gethostname()}"
    try:
        context.celery.worker_main(
            [
                "worker",
                "--pool=solo",
                "--concurrency=1",
                f"--queues={','.join(queues or [settings.queue])}",
                f"--loglevel={loglevel}",
                f"--hostname={name}",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )
    finally:
        stop_reaper.set()
