"""Running one job: claim it, keep its lease alive, report progress, honour cancellation, store the artifacts.

The task message carries the job id only; the spec and the uploads come from the database and storage.
A redelivered job restarts from scratch. Artifacts become visible (rows in the database) only when the
job succeeds, in the same transaction; files of a cancelled or failed attempt are removed.

A job whose synthesis has several chunks (``synthesis_chunk_batches``, service.chunks) is split after preparing: this
worker queues its chunks for every idle worker (worker.chunks) and stops; the job's last chunk queues its distillation,
which ``JobRunner.distill`` runs: it assembles the chunks' surrogate set and goes on as a one-task job does.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from celery import Celery
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from core.artifacts import OPENVINO_BIN_FILE, OPENVINO_XML_FILE, TFLITE_FILE
from core.bank import storage_bank_store
from core.checkpoints import Checkpoints
from core.coverage import Coverage
from core.devices import job_device
from core.images import to_pixels
from core.pipeline import (
    CARD_FILE,
    INT8_ONNX_FILE,
    METRICS_FILE,
    ONNX_FILE,
    SAMPLES_FILE,
    TORCHSCRIPT_FILE,
    BankRequest,
    CustomizeCancelled,
    CustomizeResult,
    Preparation,
    Progress,
    assemble_surrogate,
    bank_stage,
    customize,
    distill_and_export,
    job_fraction,
    pool_encoder,
    pool_views,
    prepare,
    stage_estimates,
    synthesis_plan,
    uses_bank,
    with_bank,
    working_size,
)
from core.pools import PoolSource, PoolViews
from core.spec import CustomizeSpec, ResolvedSpec, resolve
from core.stored import storage_object_store
from core.synthesis import chunk_from_bytes
from core.teachers import default_cache_dir
from core.teachers.base import Teacher
from service import chunks, pools
from service import jobs as repo
from service.db import session_scope
from service.outbox import CHUNK
from service.settings import Settings
from service.storage import Storage, StorageError, artifact_key, checkpoint_key, checkpoints_prefix, sha256_hex
from worker.attempts import CancelCheck, LeaseKeeper, LeaseLost, new_owner, settle
from worker.teachers import get_teacher

log = logging.getLogger("clipforge.worker")

CONTENT_TYPES = {
    ONNX_FILE: "application/onnx",
    INT8_ONNX_FILE: "application/onnx",
    TORCHSCRIPT_FILE: "application/octet-stream",
    CARD_FILE: "application/json",
    METRICS_FILE: "application/json",
    SAMPLES_FILE: "image/png",
    OPENVINO_XML_FILE: "application/xml",
    OPENVINO_BIN_FILE: "application/octet-stream",
    TFLITE_FILE: "application/octet-stream",
}


@dataclass(frozen=True)
class RunOutcome:
    job_id: str
    status: str  # succeeded, failed, cancelled, skipped, lost, split (its chunks queued for every worker)


SPLIT = "split"


# What a job's run computes once the job is claimed: its result, or None when it split its synthesis over workers.
Compute = Callable[[ResolvedSpec, Teacher, dict[str, torch.Tensor], "ProgressReporter"], CustomizeResult | None]


class JobRunner:
    def __init__(self, settings: Settings, factory: sessionmaker[Session], storage: Storage, celery: Celery | None = None) -> None:
        self.settings, self.factory, self.storage, self.celery = settings, factory, storage, celery

    def run(self, job_id: str) -> RunOutcome:
        """``clipforge.run_job``: claim the job, then run it whole, or prepare it and split its synthesis into chunks."""
        owner = new_owner()
        with session_scope(self.factory) as session:
            job = repo.claim(session, job_id, owner, self.settings.lease_seconds, self.settings.max_attempts)
            if job is None:
                log.info("job %s is not ours to run (finished, cancelled, deleted or leased elsewhere)", job_id)
                return RunOutcome(job_id, "skipped")
            spec_data = dict(job.spec)
            uploads = [(u.class_name, u.storage_key) for u in repo.list_uploads(session, job_id)]
        keeper = self._keeper(job_id, owner)
        keeper.start()
        try:
            return self._execute(job_id, owner, spec_data, uploads, keeper, functools.partial(self._whole_or_split, job_id, owner))
        finally:
            keeper.stop()

    def distill(self, job_id: str) -> RunOutcome:
        """``clipforge.distill_job``: a split job whose chunks are all done: take its lease, assemble the chunks' surrogate
        set, distil, export and finish the job as a one-task run does."""
        owner = new_owner()
        with session_scope(self.factory) as session:
            outcome, task = chunks.claim_distillation(session, job_id, owner, self.settings.lease_seconds)
        if outcome == chunks.ENDED:
            self.storage.delete_prefix(chunks.chunks_prefix(job_id))
            log.info("job %s: cancelled before its distillation", job_id)
            return RunOutcome(job_id, repo.CANCELLED)
        if task is None:
            log.info("job %s: its distillation is not ours to run (not ready, finished, or running elsewhere)", job_id)
            return RunOutcome(job_id, "skipped")
        keeper = self._keeper(job_id, owner)
        keeper.start()
        try:
            return self._execute(job_id, owner, task.spec, task.uploads, keeper, functools.partial(self._distill, job_id, task), split=True)
        finally:
            keeper.stop()

    def _checkpoints(self, job_id: str, reporter: ProgressReporter) -> Checkpoints | None:
        """The job's checkpoints in storage, under its artifact prefix (internal files, never artifact rows): a requeued
        attempt resumes from them; the job's end removes them."""
        if not self.settings.checkpoint_interval_seconds:
            return None

        def load(name: str) -> bytes | None:
            key = checkpoint_key(job_id, name)
            try:
                return self.storage.read(key) if self.storage.exists(key) else None
            except StorageError:
                log.exception("job %s: checkpoint %s unreadable; starting that stage afresh", job_id, name)
                return None

        def save(name: str, data: bytes) -> None:
            try:
                self.storage.put(checkpoint_key(job_id, name), data)
            except StorageError:  # the run goes on; a lost worker would cost more, nothing else
                log.exception("job %s: checkpoint %s not saved", job_id, name)

        return Checkpoints(load, save, self.settings.checkpoint_interval_seconds, on_resume=reporter.on_resume)

    def _resolve(self, spec_data: dict[str, Any]) -> tuple[ResolvedSpec, Teacher]:
        return resolve_for_worker(spec_data, self.settings)

    def _keeper(self, job_id: str, owner: str) -> LeaseKeeper:
        seconds = self.settings.lease_seconds
        return LeaseKeeper(
            self.factory, job_id, self.settings.beat_seconds, lambda session: repo.renew_lease(session, job_id, owner, seconds)
        )

    def _whole_or_split(
        self, job_id: str, owner: str, spec: CustomizeSpec, teacher: Teacher, examples: dict[str, torch.Tensor], reporter: ProgressReporter
    ) -> CustomizeResult | None:
        plan = synthesis_plan(spec, teacher, self.settings.synthesis_chunk_batches, self.settings.synthesis_max_chunks)
        bank = self._bank()
        # One chunk, or a synthesis that only chooses prior samples from a bank (milliseconds a batch): nothing to share,
        # the job runs here whole.
        if len(plan) < 2 or (bank is not None and not spec.synthesis.steps):
            pool = read_pool_source(self.factory, self.storage, spec, teacher)
            towers = self.settings.cache_dir or default_cache_dir()  # a large teacher's onnxruntime towers, beside its weights
            return customize(spec, teacher, examples=examples, on_progress=reporter.on_progress, should_cancel=reporter.should_cancel,
                             checkpoints=self._checkpoints(job_id, reporter), bank=bank, pool=pool,
                             pool_store=storage_object_store(self.storage), tower_dir=towers,
                             max_cpu_seconds=self.settings.cpu_job_max_seconds or None)  # fmt: skip
        self._split(job_id, owner, spec, teacher, examples, reporter, plan)
        return None

    def _split(
        self,
        job_id: str,
        owner: str,
        spec: CustomizeSpec,
        teacher: Teacher,
        examples: dict[str, torch.Tensor],
        reporter: ProgressReporter,
        plan: list[list[int]],
    ) -> None:
        """Prepare (which checks the prompts and example images before any chunk runs), then hand the synthesis over to
        chunks and publish them as a group. A broker that refuses them leaves them flagged: the reaper publishes them."""
        estimates = stage_estimates(spec)
        pool = self._pool(spec, teacher, reporter, estimates)
        reporter.on_progress(Progress("preparing", 0.0, job_fraction(estimates, "preparing", 0.0), None))
        if reporter.should_cancel():
            raise CustomizeCancelled("cancelled during preparing")
        preparation = prepare(spec, teacher, examples, pool=pool)
        self._bank_stage(preparation, teacher, reporter, estimates)  # built here, once, before the chunks that load it
        self.storage.put(chunks.coverage_key(job_id), json.dumps(preparation.coverage.to_json()).encode())
        progress = round(job_fraction(estimates, "synthesizing", 0.0), 4)
        with session_scope(self.factory) as session:
            if not chunks.split(session, job_id, owner, plan, progress=progress, publish_grace_seconds=self.settings.publish_grace_seconds):
                if repo.current_status(session, job_id, owner) == repo.CANCELLING:
                    raise CustomizeCancelled("cancelled during preparing")
                raise LeaseLost(job_id)
            flagged = chunks.publication_flags(session, job_id)
        for index, due in flagged:  # a broker that refuses one leaves it and the rest flagged: the reaper publishes them
            if not CHUNK.try_publish(self.celery, self.settings, self.factory, (job_id, index), due):
                break
        log.info("job %s: synthesis split into %d chunks of %s batches", job_id, len(plan), [len(c) for c in plan])

    def _distill(
        self,
        job_id: str,
        task: chunks.DistillationTask,
        spec: CustomizeSpec,
        teacher: Teacher,
        examples: dict[str, torch.Tensor],
        reporter: ProgressReporter,
    ) -> CustomizeResult:
        pool = self._pool(spec, teacher)
        preparation = prepare(spec, teacher, examples, coverage=read_coverage(self.storage, job_id), pool=pool)
        preparation = with_bank(preparation, teacher, self._bank())
        pieces = []
        for stored in task.chunks:
            data = self.storage.read(stored.key)
            if sha256_hex(data) != stored.sha256:
                raise StorageError(f"chunk {stored.index} of the job ({stored.key}) does not match its recorded sha256")
            pieces.append(chunk_from_bytes(data))
        surrogate = assemble_surrogate(pieces)
        batches = sum(len(piece.batch_indices) for piece in pieces)
        synthesis_metrics = {"chunks": len(pieces), "batches": batches, "workers": task.workers}
        return distill_and_export(
            preparation,
            teacher,
            surrogate,
            on_progress=reporter.on_progress,
            should_cancel=reporter.should_cancel,
            stage_seconds=task.stage_seconds,
            extra_metrics={"synthesis_chunks": synthesis_metrics},
            checkpoints=self._checkpoints(job_id, reporter),
        )

    def _execute(
        self,
        job_id: str,
        owner: str,
        spec_data: dict[str, Any],
        uploads: list[tuple[str, str]],
        keeper: LeaseKeeper,
        compute: Compute,
        *,
        split: bool = False,
    ) -> RunOutcome:
        """Run ``compute`` under the job's lease and end the job with what it gives: artifacts stored and the job
        succeeded, or failed, or cancelled (its files removed). ``split``: the job's chunk files go once it succeeds."""
        prefix = f"artifacts/{job_id}"

        def attempt() -> RunOutcome:
            spec, teacher = self._resolve(spec_data)
            examples = self._examples(uploads, teacher.image_size)
            reporter = ProgressReporter(self, job_id, owner, keeper, budget=spec.budget)
            result = compute(spec, teacher, examples, reporter)
            if result is None:
                return RunOutcome(job_id, SPLIT)
            keeper.check()
            stored = [(name, CONTENT_TYPES.get(name, "application/octet-stream"), self.storage.put(artifact_key(job_id, name), data))
                      for name, data in sorted(result.artifacts.items())]  # fmt: skip
            with session_scope(self.factory) as session:
                if not repo.finish(session, job_id, owner, repo.SUCCEEDED, artifacts=stored, metrics=json_safe(result.metrics)):
                    raise LeaseLost(job_id)
            self.storage.delete_prefix(checkpoints_prefix(job_id))  # internal, as the chunks: the job's artifacts are out
            if split:
                self.storage.delete_prefix(chunks.chunks_prefix(job_id))
            log.info("job %s succeeded", job_id)
            return RunOutcome(job_id, repo.SUCCEEDED)

        def end(status: str, code: str | None = None, message: str | None = None) -> RunOutcome:
            # Another worker owns the job when the lease is lost (its files are that worker's business); otherwise the
            # attempt's files go and the job ends.
            self.storage.delete_prefix(prefix)
            with session_scope(self.factory) as session:
                repo.finish(session, job_id, owner, status, code=code, message=message)
            log.info("job %s %s", job_id, status)
            return RunOutcome(job_id, status)

        return settle(
            f"job {job_id}",
            attempt,
            lost=lambda: RunOutcome(job_id, "lost"),
            cancelled=lambda: end(repo.CANCELLED, message="cancelled while running"),
            failed=lambda code, message: end(repo.FAILED, code, message),
        )

    def _examples(self, uploads: list[tuple[str, str]], size: int) -> dict[str, torch.Tensor]:
        return read_examples(self.storage, uploads, size)

    def _bank_stage(self, preparation: Preparation, teacher: Teacher, reporter: ProgressReporter, estimates: dict[str, float]) -> None:
        """A split job's "bank" stage: its sample bank loaded, or built in storage for its chunks and distillation."""
        request = self._bank()
        if request is None or not uses_bank(preparation, request):
            return

        def report(fraction: float, figures: dict[str, float] | None, message: str | None) -> None:
            if reporter.should_cancel():
                raise CustomizeCancelled("cancelled while building the sample bank")
            progress = job_fraction(estimates, "bank", fraction)
            reporter.on_progress(Progress("bank", fraction, progress, None, metrics=figures or {}, message=message))

        bank_stage(preparation, teacher, request, report)

    def _bank(self) -> BankRequest | None:
        return bank_request(self.settings, self.storage)

    def _pool(
        self, spec: ResolvedSpec, teacher: Teacher, reporter: ProgressReporter | None = None, estimates: dict[str, float] | None = None
    ) -> PoolViews | None:
        """The spec's pool with its embeddings (None without one): a split job's first process builds them (its "pool"
        stage, with progress and a large CPU teacher's onnxruntime tower, as ``customize`` does), its distillation loads them."""
        if reporter is None or estimates is None:
            return read_pool(self.factory, self.storage, spec, teacher)
        source = read_pool_source(self.factory, self.storage, spec, teacher)
        if source is None:
            return None

        def report(fraction: float) -> None:
            if reporter.should_cancel():
                raise CustomizeCancelled("cancelled during pool")
            reporter.on_progress(Progress("pool", fraction, job_fraction(estimates, "pool", fraction), None))

        report(0.0)
        towers = self.settings.cache_dir or default_cache_dir()
        encoder = pool_encoder(spec, teacher, source, towers, report=lambda: report(0.0))
        store = storage_object_store(self.storage)
        return pool_views(spec, teacher, source, store, encoder=encoder, on_step=lambda done, total: report(done / total))


def bank_request(settings: Settings, storage: Storage) -> BankRequest | None:
    """Where this service keeps its sample banks (its storage), None when ``sample_bank_images`` is 0."""
    if not settings.sample_bank_images:
        return None
    return BankRequest(storage_bank_store(storage), settings.sample_bank_images)


class PoolUnavailableError(RuntimeError):
    code = "pool_unavailable"


def read_pool(factory: sessionmaker[Session], storage: Storage, spec: ResolvedSpec, teacher: Teacher) -> PoolViews | None:
    """The spec's pool with the teacher's embeddings of its images and views (core.pipeline.pool_views), kept in the
    service's storage: built by the first job on the pool and teacher, loaded by every later one; None without a pool."""
    source = read_pool_source(factory, storage, spec, teacher)
    return None if source is None else pool_views(spec, teacher, source, storage_object_store(storage))


def read_pool_source(factory: sessionmaker[Session], storage: Storage, spec: ResolvedSpec, teacher: Teacher) -> PoolSource | None:
    """The spec's pool images, held at the student's size only (read again from storage at the teacher's while its
    embeddings are built); None without a pool."""
    if spec.synthesis.pool is None:
        return None
    with session_scope(factory) as session:
        rows = [(image.storage_key, image.sha256) for image in pools.images(session, spec.synthesis.pool)]
    if not rows:  # deleted under a queued job (the API refuses that; a database edit does not)
        raise PoolUnavailableError(f"pool {spec.synthesis.pool!r} has no images (deleted?)")
    content = hashlib.sha256("".join(f"{sha}\n" for _, sha in rows).encode()).hexdigest()
    readers = [functools.partial(storage.read, key) for key, _ in rows]
    return PoolSource.from_files(readers, content, working_size(spec, teacher))


def read_pixels(storage: Storage, key: str, size: int) -> torch.Tensor:
    """A stored image as pixels (3, size, size) in [0, 1]."""
    with Image.open(io.BytesIO(storage.read(key))) as image:
        return to_pixels(image, size)


def resolve_for_worker(spec_data: dict[str, Any], settings: Settings) -> tuple[ResolvedSpec, Teacher]:
    """A stored spec resolved once, on the device it asks for (``device_unavailable`` when this worker has none, never a
    silent fall-back), with its teacher loaded there: what every stage of the job then runs with."""
    spec = CustomizeSpec.model_validate(spec_data)
    device = job_device(spec.device, settings.device)
    teacher = get_teacher(spec.teacher or settings.default_teacher, str(device), settings.cache_dir)
    return resolve(spec, teacher.device.type, teacher), teacher


def read_coverage(storage: Storage, job_id: str) -> Coverage | None:
    """The prior's coverage a split job measured before queueing its chunks; None where none was stored."""
    key = chunks.coverage_key(job_id)
    return Coverage.from_json(json.loads(storage.read(key))) if storage.exists(key) else None


def read_examples(storage: Storage, uploads: list[tuple[str, str]], size: int) -> dict[str, torch.Tensor]:
    """A job's example images by class name, as pixels at the teacher's ``size``."""
    by_class: dict[str, list[torch.Tensor]] = {}
    for class_name, key in uploads:
        by_class.setdefault(class_name, []).append(read_pixels(storage, key, size))
    return {name: torch.stack(images) for name, images in by_class.items()}


class ProgressReporter:
    """Writes progress to the job row and events at most every ``progress_interval_seconds`` or on a stage change,
    and reads the row for cancellation at most every ``cancel_check_interval_seconds``."""

    def __init__(self, runner: JobRunner, job_id: str, owner: str, keeper: LeaseKeeper, *, budget: str | None = None) -> None:
        self.runner, self.job_id, self.owner, self.keeper = runner, job_id, owner, keeper
        self.budget = budget  # the budget the job's spec resolved to: the API shows it while the job runs
        self.stage: str | None = None
        self.last_write = 0.0
        self.should_cancel = CancelCheck(keeper, runner.settings.cancel_check_interval_seconds, self._read_status)

    def on_progress(self, progress: Progress) -> None:
        now = time.monotonic()
        stage_changed = progress.stage != self.stage
        finished_stage = progress.stage_fraction >= 1.0
        if not (
            stage_changed or finished_stage or progress.message or now - self.last_write >= self.runner.settings.progress_interval_seconds
        ):
            return
        self.stage, self.last_write = progress.stage, now
        eta = None if progress.eta_seconds is None else round(progress.eta_seconds, 1)
        with session_scope(self.runner.factory) as session:
            if not repo.record_progress(
                session,
                self.job_id,
                self.owner,
                stage=progress.stage,
                progress=round(progress.fraction, 4),
                eta_seconds=eta,
                eta_measured_share=progress.eta_measured_share,
                metrics={k: float(v) for k, v in progress.metrics.items()},
                stage_changed=stage_changed,
                budget=self.budget,
                message=progress.message,
                estimated_seconds=progress.estimated_seconds,
            ):
                raise LeaseLost(self.job_id)

    def _read_status(self) -> str | None:
        with session_scope(self.runner.factory) as session:
            return repo.current_status(session, self.job_id, self.owner)

    def on_resume(self, stage: str, step: int, total: int) -> None:
        """An earlier attempt's checkpoint was found: the job's events say what this attempt skips."""
        what = f"the surrogate set of {total} images" if stage == "synthesizing" else f"step {step} of {total}"
        with session_scope(self.runner.factory) as session:
            if not repo.record_resumed(
                session, self.job_id, self.owner, stage=stage, step=step, total=total, message=f"{stage}: resumed from {what}"
            ):
                raise LeaseLost(self.job_id)


def json_safe(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return float(value) if hasattr(value, "__float__") else str(value)  # type: ignore[arg-type]
