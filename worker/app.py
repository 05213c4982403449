"""The worker's Celery app: ``create_worker_app(settings)`` registers the tasks (a job, a split job's synthesis chunk and
its distillation, an evaluation, a pool's embeddings built ahead) on ``service.queue.create_celery``'s config, and
``run_worker`` starts a worker (one task at a time) with the lease reaper beside it."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, make_session_factory, migrate
from service.queue import DISTILL_JOB_TASK, EMBED_POOL_TASK, RUN_EVALUATION_TASK, RUN_JOB_TASK, SYNTHESIZE_CHUNK_TASK, create_celery
from service.reaper import start_reaper
from service.settings import Settings
from service.storage import Storage, create_storage
from worker.chunks import ChunkRunner
from worker.evaluation import EvaluationRunner
from worker.pool_embedding import PoolEmbeddingRunner
from worker.runner import JobRunner

log = logging.getLogger("clipforge.worker")


@dataclass
class WorkerContext:
    settings: Settings
    celery: Celery
    factory: sessionmaker[Session]
    runner: JobRunner
    storage: Storage


def create_worker_app(settings: Settings) -> WorkerContext:
    celery = create_celery(settings)
    factory = make_session_factory(make_engine(settings.database_url))
    storage = create_storage(settings)
    runner = JobRunner(settings, factory, storage, celery)
    chunk_runner = ChunkRunner(settings, factory, storage, celery)
    evaluator = EvaluationRunner(settings, factory, storage)
    embedder = PoolEmbeddingRunner(settings, factory, storage)

    @celery.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def run_job(job_id: str) -> str:
        return runner.run(job_id).status

    @celery.task(name=SYNTHESIZE_CHUNK_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def synthesize_chunk(job_id: str, index: int) -> str:
        return chunk_runner.run(job_id, int(index)).status

    @celery.task(name=DISTILL_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def distill_job(job_id: str) -> str:
        return runner.distill(job_id).status

    @celery.task(name=RUN_EVALUATION_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def run_evaluation(evaluation_id: str) -> str:
        return evaluator.run(evaluation_id)

    @celery.task(name=EMBED_POOL_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def embed_pool(embedding_id: str) -> str:
        return embedder.run(embedding_id)

    return WorkerContext(settings, celery, factory, runner, storage)


def run_worker(settings: Settings, queues: list[str] | None = None, loglevel: str = "INFO") -> None:
    """A blocking worker: solo pool (the job runs in this process, one at a time), prefetch 1, the lease reaper beside it."""
    if settings.worker_nice:
        os.nice(settings.worker_nice)  # relative to the parent's niceness; this process and its threads
    settings.ensure_local_dirs()
    if settings.migrate_on_start:
        migrate(settings.database_url)
    context = create_worker_app(settings)
    stop_reaper = start_reaper(settings, context.factory, context.celery, context.storage)
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
