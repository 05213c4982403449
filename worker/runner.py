"""Running one job: claim it, keep its lease alive, report progress, honour cancellation, store the artifacts.

The task message carries the job id only; the spec and the uploads come from the database and storage.
A redelivered job restarts from scratch. Artifacts become visible (rows in the database) only when the
job succeeds, in the same transaction; files of a cancelled or failed attempt are removed.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from core.images import to_pixels
from core.pipeline import (
    CARD_FILE,
    INT8_ONNX_FILE,
    METRICS_FILE,
    ONNX_FILE,
    SAMPLES_FILE,
    TORCHSCRIPT_FILE,
    CustomizeCancelled,
    Progress,
    customize,
)
from core.spec import CustomizeSpec
from service import jobs as repo
from service.db import session_scope
from service.settings import Settings
from service.storage import Storage, artifact_key
from worker.teachers import get_teacher

log = logging.getLogger("clipforge.worker")

CONTENT_TYPES = {
    ONNX_FILE: "application/onnx",
    INT8_ONNX_FILE: "application/onnx",
    TORCHSCRIPT_FILE: "application/octet-stream",
    CARD_FILE: "application/json",
    METRICS_FILE: "application/json",
    SAMPLES_FILE: "image/png",
}


class LeaseLost(Exception):
    """The job was deleted or taken over by another worker: stop without touching it."""


@dataclass(frozen=True)
class RunOutcome:
    job_id: str
    status: str  # succeeded, failed, cancelled, skipped, lost


class LeaseKeeper(threading.Thread):
    """Renews a lease (a job's, or through ``renew`` an evaluation's) every third of its length; notes when it is lost."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        job_id: str,
        owner: str,
        lease_seconds: float,
        renew: Callable[[Session, str, str, float], object] = repo.renew_lease,
    ) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.factory, self.job_id, self.owner, self.lease_seconds = factory, job_id, owner, lease_seconds
        self.renew = renew  # falsy result: the lease is no longer this owner's
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.stopped.wait(self.lease_seconds / 3):
            try:
                with session_scope(self.factory) as session:
                    if not self.renew(session, self.job_id, self.owner, self.lease_seconds):
                        self.lost = True
                        return
            except Exception:  # a database hiccup: try again at the next beat, the lease has slack
                log.exception("lease renewal of %s failed", self.job_id)

    def stop(self) -> None:
        self.stopped.set()


class JobRunner:
    def __init__(self, settings: Settings, factory: sessionmaker[Session], storage: Storage) -> None:
        self.settings, self.factory, self.storage = settings, factory, storage

    def run(self, job_id: str) -> RunOutcome:
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        with session_scope(self.factory) as session:
            job = repo.claim(session, job_id, owner, self.settings.lease_seconds, self.settings.max_attempts)
            if job is None:
                log.info("job %s is not ours to run (finished, cancelled, deleted or leased elsewhere)", job_id)
                return RunOutcome(job_id, "skipped")
            spec_data = dict(job.spec)
            uploads = [(u.class_name, u.storage_key) for u in repo.list_uploads(session, job_id)]
        keeper = LeaseKeeper(self.factory, job_id, owner, self.settings.lease_seconds)
        keeper.start()
        try:
            return self._execute(job_id, owner, spec_data, uploads, keeper)
        finally:
            keeper.stop()

    def _execute(
        self, job_id: str, owner: str, spec_data: dict[str, Any], uploads: list[tuple[str, str]], keeper: LeaseKeeper
    ) -> RunOutcome:
        prefix = f"artifacts/{job_id}"
        try:
            spec = CustomizeSpec.model_validate(spec_data)
            teacher = get_teacher(spec.teacher, self.settings.device, self.settings.cache_dir)
            examples = self._examples(uploads, teacher.image_size)
            reporter = ProgressReporter(self, job_id, owner, keeper)
            result = customize(spec, teacher, examples=examples, on_progress=reporter.on_progress, should_cancel=reporter.should_cancel)
            if keeper.lost:
                raise LeaseLost(job_id)
            stored = [(name, CONTENT_TYPES.get(name, "application/octet-stream"), self.storage.put(artifact_key(job_id, name), data))
                      for name, data in sorted(result.artifacts.items())]  # fmt: skip
            with session_scope(self.factory) as session:
                if not repo.finish(session, job_id, owner, repo.SUCCEEDED, artifacts=stored, metrics=_json_safe(result.metrics)):
                    raise LeaseLost(job_id)
            log.info("job %s succeeded", job_id)
            return RunOutcome(job_id, repo.SUCCEEDED)
        except LeaseLost:
            # Another worker owns the job now (or it was deleted): its files are that worker's business.
            log.warning("job %s: lease lost; stopping without touching it", job_id)
            return RunOutcome(job_id, "lost")
        except CustomizeCancelled:
            self.storage.delete_prefix(prefix)
            with session_scope(self.factory) as session:
                repo.finish(session, job_id, owner, repo.CANCELLED, message="cancelled while running")
            log.info("job %s cancelled", job_id)
            return RunOutcome(job_id, repo.CANCELLED)
        except Exception as exc:
            self.storage.delete_prefix(prefix)
            code = getattr(exc, "code", None) or "internal_error"
            log.exception("job %s failed [%s]", job_id, code)
            with session_scope(self.factory) as session:
                repo.finish(session, job_id, owner, repo.FAILED, code=str(code), message=f"{type(exc).__name__}: {exc}")
            return RunOutcome(job_id, repo.FAILED)

    def _examples(self, uploads: list[tuple[str, str]], size: int) -> dict[str, torch.Tensor]:
        by_class: dict[str, list[torch.Tensor]] = {}
        for class_name, key in uploads:
            with Image.open(io.BytesIO(self.storage.read(key))) as image:
                by_class.setdefault(class_name, []).append(to_pixels(image, size))
        return {name: torch.stack(images) for name, images in by_class.items()}


class ProgressReporter:
    """Writes progress to the job row and events at most every ``progress_interval_seconds`` or on a stage change,
    and reads the row for cancellation at most every ``cancel_check_interval_seconds``."""

    def __init__(self, runner: JobRunner, job_id: str, owner: str, keeper: LeaseKeeper) -> None:
        self.runner, self.job_id, self.owner, self.keeper = runner, job_id, owner, keeper
        self.stage: str | None = None
        self.last_write = 0.0
        self.last_check = 0.0
        self.cancel_requested = False

    def on_progress(self, progress: Progress) -> None:
        now = time.monotonic()
        stage_changed = progress.stage != self.stage
        finished_stage = progress.stage_fraction >= 1.0
        if not (stage_changed or finished_stage or now - self.last_write >= self.runner.settings.progress_interval_seconds):
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
                metrics={k: float(v) for k, v in progress.metrics.items()},
                stage_changed=stage_changed,
            ):
                raise LeaseLost(self.job_id)

    def should_cancel(self) -> bool:
        if self.keeper.lost:
            raise LeaseLost(self.job_id)
        now = time.monotonic()
        if self.cancel_requested or now - self.last_check < self.runner.settings.cancel_check_interval_seconds:
            return self.cancel_requested
        self.last_check = now
        with session_scope(self.runner.factory) as session:
            status = repo.current_status(session, self.job_id, self.owner)
        if status is None:
            raise LeaseLost(self.job_id)
        self.cancel_requested = status == repo.CANCELLING
        return self.cancel_requested


def _json_safe(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return float(value) if hasattr(value, "__float__") else str(value)  # type: ignore[arg-type]
