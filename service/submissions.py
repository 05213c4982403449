"""Submitting work: a job (its example images, then its row), an evaluation (its labelled images, then its rows) or a
pool created with a teacher (its images, then its rows and its queued embedding), stored and then published, with
nothing left behind when any step fails.

All go the same way: the files first (a failure removes whatever was written), then the rows in one transaction
flagged for publication (the outbox), then the message. A broker that refuses the message rolls the whole submission
back (503 ``broker_unavailable``): the client was told it failed, so no queued row may stay, and its retry (with the same
Idempotency-Key, for a job) creates it afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from celery import Celery
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service import evaluations, pool_embeddings, pools
from service import jobs as repo
from service.db import session_scope
from service.errors import ServiceError
from service.ids import new_id
from service.leases import Key
from service.models import Evaluation, Job, Pool, PoolEmbedding
from service.outbox import EVALUATION, JOB, POOL_EMBEDDING, Outbox
from service.queue import BrokerUnavailable
from service.settings import Settings
from service.specs import estimated_duration
from service.storage import Storage, StorageError, StorageFull, job_prefixes, upload_key
from service.uploads import SubmittedImage

T = TypeVar("T")


@dataclass
class JobSubmission:
    spec: dict[str, Any]  # the validated spec with defaults filled in (upload ids added here)
    images: Sequence[SubmittedImage] = field(default_factory=list)
    request_hash: str = ""  # the request's hash: an Idempotency-Key replayed with another body is refused
    webhook_url: str | None = None  # where the job's end is delivered (service.webhooks); not part of the engine's spec
    webhook_events: list[str] | None = None


def check_quota(session: Session, tenant_id: str | None, settings: Settings, *, lock: bool = False) -> None:
    active = repo.count_active_jobs(session, tenant_id, lock=lock)
    if active >= settings.max_active_jobs_per_tenant:
        raise ServiceError(
            "too_many_active_jobs",
            f"{active} jobs are queued or running; at most {settings.max_active_jobs_per_tenant} per tenant. Retry when one ends.",
            429,
            {"limit": settings.max_active_jobs_per_tenant, "active": active},
            headers={"Retry-After": str(settings.quota_retry_after_seconds)},
        )


def _replay(session: Session, key: str, request_hash: str, tenant_id: str | None) -> Job | None:
    existing = repo.find_by_idempotency_key(session, key, tenant_id)
    if existing is None:
        return None
    if existing.request_hash != request_hash:
        raise ServiceError(
            "idempotency_key_reused", f"Idempotency-Key {key!r} was used for a different request", 409, {"job_id": existing.id}
        )
    return existing


def _storing(what: str, prefixes: Sequence[str], storage: Storage, store: Callable[[], T]) -> T:
    """Run ``store``; whatever fails, no file of it is left behind, and a storage failure is the client's 503/507."""
    try:
        return store()
    except BaseException as exc:
        for prefix in prefixes:
            storage.delete_prefix(prefix)
        if isinstance(exc, StorageError):
            raise ServiceError(exc.code, f"the {what} could not be stored: {exc}", 507 if isinstance(exc, StorageFull) else 503) from None
        raise


def _publish_or_withdraw(
    outbox: Outbox,
    key: Key,
    due_at: datetime,
    celery: Celery,
    settings: Settings,
    factory: sessionmaker[Session],
    withdraw: Callable[[], None],
) -> None:
    try:
        outbox.publish(celery, settings, factory, key, due_at)
    except BrokerUnavailable as exc:
        withdraw()
        raise ServiceError("broker_unavailable", f"the {outbox.name} could not be queued; try again: {exc}", 503) from None


def store_job(
    submission: JobSubmission, key: str | None, factory: sessionmaker[Session], storage: Storage, tenant_id: str | None, settings: Settings
) -> tuple[Job, bool]:
    """Store the uploads, then the job row; (job, created). A replayed key answers the first job (quota or not)."""
    with session_scope(factory) as session:
        if key is not None:
            existing = _replay(session, key, submission.request_hash, tenant_id)
            if existing is not None:
                return existing, False
        check_quota(session, tenant_id, settings)  # before any upload is written
    job_id = new_id("job")

    def store() -> tuple[Job, bool]:
        uploads = []
        for image in submission.images:
            upload_id = new_id("upl")
            stored = storage.put(upload_key(job_id, upload_id), image.content)
            uploads.append(repo.NewUpload(image.class_name, image.position, image.filename, image.content_type, image.width,
                                          image.height, stored, upload_id))  # fmt: skip
        ids: dict[str, list[str]] = {}
        for upload in uploads:
            ids.setdefault(upload.class_name, []).append(upload.id)
        spec = {**submission.spec, "classes": [{**c, "images": ids.get(c["name"], [])} for c in submission.spec["classes"]]}
        try:
            with session_scope(factory) as session:
                check_quota(session, tenant_id, settings, lock=True)  # again, in the transaction that adds the job
                pool_id = spec["synthesis"].get("pool")
                if pool_id is not None:  # the tenant's, and locked until the job that keeps it is added
                    pools.get(session, pool_id, tenant_id, lock=True)
                job = repo.create_job(
                    session,
                    job_id=job_id,
                    spec=spec,
                    uploads=uploads,
                    idempotency_key=key,
                    request_hash=submission.request_hash,
                    tenant_id=tenant_id,
                    publish_grace_seconds=settings.publish_grace_seconds,
                    estimated_seconds=estimated_duration(spec, settings),
                    webhook_url=submission.webhook_url,
                    webhook_events=submission.webhook_events,
                    pool_id=pool_id,
                )
            return job, True
        except IntegrityError:
            if key is None:
                raise
            with session_scope(factory) as session:  # two requests with one key raced: the other one won
                existing = _replay(session, key, submission.request_hash, tenant_id)
            if existing is None:
                raise
            for prefix in job_prefixes(job_id):
                storage.delete_prefix(prefix)
            return existing, False

    return _storing("uploads", job_prefixes(job_id), storage, store)


def withdraw_job(job_id: str, factory: sessionmaker[Session], storage: Storage) -> None:
    """Remove a just-created job whose message was not published: its rows, then its uploads."""
    with session_scope(factory) as session:
        prefixes = repo.delete_job(session, job_id)
    for prefix in prefixes:
        storage.delete_prefix(prefix)


def submit_job(
    submission: JobSubmission,
    key: str | None,
    factory: sessionmaker[Session],
    storage: Storage,
    celery: Celery,
    tenant_id: str | None,
    settings: Settings,
) -> tuple[Job, bool]:
    """Store a new job and publish its message; (job, created). A replayed key publishes nothing."""
    job, created = store_job(submission, key, factory, storage, tenant_id, settings)
    if created:
        assert job.publish_due_at is not None  # create_job flags every new job
        _publish_or_withdraw(JOB, (job.id,), job.publish_due_at, celery, settings, factory, lambda: withdraw_job(job.id, factory, storage))
    return job, created


def submit_evaluation(
    job_id: str,
    images: Sequence[SubmittedImage],
    counts: dict[str, int],
    factory: sessionmaker[Session],
    storage: Storage,
    celery: Celery,
    settings: Settings,
) -> Evaluation:
    """Store the images, then the rows (flagged for publication), then publish; on any failure nothing is left behind."""
    evaluation_id = evaluations.new_evaluation_id()
    prefixes = evaluations.prefixes(job_id, evaluation_id)

    def store() -> datetime | None:
        stored = []
        for image in images:
            image_id = evaluations.new_image_id()
            put = storage.put(evaluations.image_key(job_id, evaluation_id, image_id), image.content)
            stored.append(evaluations.NewImage(image.class_name, image.position, image.filename, image.content_type, put, image_id))
        with session_scope(factory) as session:
            evaluations.evaluable_job(session, job_id, repo.ANY_TENANT)  # the job may have gone meanwhile
            created = evaluations.create(session, evaluation_id=evaluation_id, job_id=job_id, counts=counts, images=stored,
                                         publish_grace_seconds=settings.publish_grace_seconds)  # fmt: skip
            return created.publish_due_at

    due_at = _storing("images", prefixes, storage, store)
    assert due_at is not None

    def withdraw() -> None:
        with session_scope(factory) as session:
            evaluations.delete_rows(session, job_id, evaluation_id)
        for prefix in prefixes:
            storage.delete_prefix(prefix)

    _publish_or_withdraw(EVALUATION, (evaluation_id,), due_at, celery, settings, factory, withdraw)
    with session_scope(factory) as session:
        return session.get_one(Evaluation, evaluation_id)


def submit_pool(
    images: Sequence[SubmittedImage],
    name: str | None,
    tenant_id: str | None,
    teacher: tuple[str, int] | None,
    factory: sessionmaker[Session],
    storage: Storage,
    celery: Celery,
    settings: Settings,
) -> tuple[Pool, list[PoolEmbedding]]:
    """A new pool (service.pools.create) and, with ``teacher`` (its name and views), the queued embedding its transaction
    made, then published; a broker that refuses it withdraws the pool (503): nothing is left behind. The pool and its
    embeddings, newest first."""
    request = None if teacher is None else pools.EmbeddingRequest(*teacher, publish_grace_seconds=settings.publish_grace_seconds)
    pool = pools.create(images, name, tenant_id, factory, storage, embedding=request)
    if request is None:
        return pool, []
    with session_scope(factory) as session:
        [queued] = pool_embeddings.list_for_pools(session, [pool.id])[pool.id]
    assert queued.publish_due_at is not None  # pool_embeddings.create flags it

    def withdraw() -> None:
        with session_scope(factory) as session:
            prefix = pools.delete_rows(session, pool.id)
        storage.delete_prefix(prefix)

    _publish_or_withdraw(POOL_EMBEDDING, (queued.id,), queued.publish_due_at, celery, settings, factory, withdraw)
    with session_scope(factory) as session:
        return pool, pool_embeddings.list_for_pools(session, [pool.id])[pool.id]
