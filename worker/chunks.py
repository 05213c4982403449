"""Running one chunk of a split job's synthesis (``clipforge.synthesize_chunk``, service.chunks): claim it under a lease,
synthesize its batches, store them as a tensor file, mark it done; the last chunk done queues the job's distillation.

Like a job's run: the message carries ids only (the job's and the chunk's index), progress goes to the job row (summed
over the chunks), cancellation is read from the job row between steps and batches, and a chunk whose lease is lost
stops without touching anything but the file it wrote itself.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from core.pipeline import job_fraction, prepare, stage_estimates, synthesize_chunk, with_bank
from core.synthesis import chunk_to_bytes
from service import chunks
from service import jobs as repo
from service.db import session_scope
from service.outbox import DISTILLATION
from service.settings import Settings
from service.storage import Storage
from worker.attempts import CancelCheck, LeaseKeeper, LeaseLost, new_owner, settle
from worker.runner import bank_request, read_coverage, read_examples, read_pool, resolve_for_worker

log = logging.getLogger("clipforge.worker")

SYNTHESIZING = "synthesizing"


@dataclass(frozen=True)
class ChunkOutcome:
    job_id: str
    index: int
    status: str  # done, failed, cancelled, skipped, lost


class ChunkRunner:
    def __init__(self, settings: Settings, factory: sessionmaker[Session], storage: Storage, celery: Celery | None = None) -> None:
        self.settings, self.factory, self.storage, self.celery = settings, factory, storage, celery

    def run(self, job_id: str, index: int) -> ChunkOutcome:
        owner = new_owner()
        with session_scope(self.factory) as session:
            outcome, task = chunks.claim(session, job_id, index, owner, self.settings.lease_seconds, self.settings.max_attempts)
        if outcome == chunks.ENDED:
            self.storage.delete_prefix(chunks.chunks_prefix(job_id))
            log.info("job %s ended at chunk %d's claim (cancelled, or its workers lost too often)", job_id, index)
            return ChunkOutcome(job_id, index, "ended")
        if task is None:
            log.info("job %s: chunk %d is not ours to run (done, running elsewhere, or its job ended)", job_id, index)
            return ChunkOutcome(job_id, index, "skipped")
        folder = chunks.chunk_folder(job_id, index, uuid.uuid4().hex[:12])
        seconds = self.settings.lease_seconds
        keeper = LeaseKeeper(
            self.factory,
            f"{job_id}/{index}",
            self.settings.beat_seconds,
            lambda session: chunks.renew_lease(session, job_id, index, owner, seconds),
        )
        keeper.start()
        try:
            return self._execute(task, owner, folder, keeper)
        finally:
            keeper.stop()

    def _execute(self, task: chunks.ChunkTask, owner: str, folder: str, keeper: LeaseKeeper) -> ChunkOutcome:
        job_id, index = task.job_id, task.index

        def attempt() -> ChunkOutcome:
            spec, teacher = resolve_for_worker(task.spec, self.settings)
            examples = read_examples(self.storage, task.uploads, teacher.image_size)
            pool = read_pool(self.factory, self.storage, spec, teacher)
            preparation = prepare(spec, teacher, examples, coverage=read_coverage(self.storage, job_id), pool=pool)
            if not preparation.synthesis.steps:  # a chunk draws on the bank only to choose prior samples without inverting
                preparation = with_bank(preparation, teacher, bank_request(self.settings, self.storage))
            estimates = stage_estimates(preparation.spec)
            reporter = ChunkReporter(self, task, owner, keeper, lambda fraction: job_fraction(estimates, SYNTHESIZING, fraction))
            began = time.monotonic()
            progress, cancel = reporter.on_progress, reporter.should_cancel
            chunk = synthesize_chunk(preparation, teacher, task.batches, on_progress=progress, should_cancel=cancel)
            keeper.check()
            stored = self.storage.put(f"{folder}/{chunks.CHUNK_FILE}", chunk_to_bytes(chunk))
            done = round(job_fraction(estimates, SYNTHESIZING, 1.0), 4)
            grace = self.settings.publish_grace_seconds
            with session_scope(self.factory) as session:
                completion = chunks.complete(session, job_id, index, owner, stored, job_progress=done, publish_grace_seconds=grace)
            if not completion.accepted:
                raise LeaseLost(job_id)
            log.info("job %s: chunk %d (batches %s) done in %.1f s", job_id, index, task.batches, time.monotonic() - began)
            if completion.ended:
                self.storage.delete_prefix(chunks.chunks_prefix(job_id))
                return ChunkOutcome(job_id, index, repo.CANCELLED)
            if completion.distill_due_at is not None:
                DISTILLATION.try_publish(self.celery, self.settings, self.factory, (job_id,), completion.distill_due_at)
            return ChunkOutcome(job_id, index, "done")

        def lost() -> ChunkOutcome:
            # The chunk is no longer ours (requeued, its job ended or deleted): only the file this attempt wrote is.
            self.storage.delete_prefix(folder)
            return ChunkOutcome(job_id, index, "lost")

        return settle(
            f"job {job_id}: chunk {index}",
            attempt,
            lost=lost,
            cancelled=lambda: self._stop(task, owner, folder, repo.CANCELLED),
            failed=lambda code, message: self._stop(task, owner, folder, repo.FAILED, code=code, message=message),
        )

    def _stop(
        self, task: chunks.ChunkTask, owner: str, folder: str, status: str, *, code: str | None = None, message: str | None = None
    ) -> ChunkOutcome:
        """End the chunk without a result; the caller that ends the job removes its chunk files."""
        self.storage.delete_prefix(folder)
        with session_scope(self.factory) as session:
            ended = chunks.stop(session, task.job_id, task.index, owner, code=code, message=message)
        if ended:
            self.storage.delete_prefix(chunks.chunks_prefix(task.job_id))
        log.info("job %s: chunk %d %s%s", task.job_id, task.index, status, "; job ended" if ended else "")
        return ChunkOutcome(task.job_id, task.index, status)


class ChunkReporter:
    """A chunk's progress to its row and the job's (throttled as a job's), and the job row's cancellation, read at most
    every ``cancel_check_interval_seconds``; a lost lease or a job that ended stops the chunk (LeaseLost)."""

    def __init__(
        self, runner: ChunkRunner, task: chunks.ChunkTask, owner: str, keeper: LeaseKeeper, to_job_fraction: Callable[[float], float]
    ) -> None:
        self.runner, self.task, self.owner, self.keeper, self.to_job_fraction = runner, task, owner, keeper, to_job_fraction
        self.last_write = 0.0
        self.should_cancel = CancelCheck(keeper, runner.settings.cancel_check_interval_seconds, self._read_status)

    def on_progress(self, fraction: float) -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - self.last_write < self.runner.settings.progress_interval_seconds:
            return
        self.last_write = now
        with session_scope(self.runner.factory) as session:
            if not chunks.record_progress(session, self.task.job_id, self.task.index, self.owner, fraction, self.to_job_fraction):
                raise LeaseLost(self.task.job_id)

    def _read_status(self) -> str | None:
        with session_scope(self.runner.factory) as session:
            return chunks.state(session, self.task.job_id, self.task.index, self.owner)
