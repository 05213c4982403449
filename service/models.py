"""ORM tables (SQLAlchemy 2 typed mappings). The schema itself is created by Alembic migrations only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Integer, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC (SQLite keeps no zone), always returned timezone-aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Tenant(Base):
    """Who owns jobs; API keys authenticate as one tenant."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiKey(Base):
    """A key's sha256 only; the key itself is shown once, when it is created (see service.auth)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the key's visible prefix, used for the lookup
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # NULL: submitted while the service ran open (no API keys); such jobs are visible only in open mode.
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    stage: Mapped[str | None] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    estimated_seconds: Mapped[float | None] = mapped_column(Float)  # the job's duration as estimated when it was submitted
    webhook_url: Mapped[str | None] = mapped_column(String(2000))  # where the job's end is delivered (service.webhooks)
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON)  # which ends; None: all of them
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    pool_id: Mapped[str | None] = mapped_column(String(40), index=True)  # the spec's synthesis.pool: a pool in use is kept
    seed: Mapped[int] = mapped_column(Integer)
    teacher: Mapped[str] = mapped_column(String(300))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # "<tenant id>:<key>" (the bare key for open-mode jobs), so that tenants cannot see or collide with each other's keys.
    idempotency_key: Mapped[str | None] = mapped_column(String(256), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the worker's last claim or lease renewal
    # The transactional outbox: set in the transaction that makes the job queued, cleared once its message is in the
    # broker. Still set after this time: the message may be missing (the publisher died), and the reaper publishes it.
    publish_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # Set when the job's synthesis was split into this many chunks (service.chunks): from then on no worker holds the
    # job's own lease until its distillation is claimed, and each chunk has a lease of its own.
    synthesis_chunks: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobChunk(Base):
    """One chunk of a job's synthesis (service.chunks): a run of the surrogate set's batches, queued with an outbox flag
    and run under a lease as jobs are; its result is a tensor file under the job's artifact prefix (not an artifact)."""

    __tablename__ = "job_chunks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    chunk_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_batch: Mapped[int] = mapped_column(Integer)  # the chunk is batches first_batch .. first_batch + batch_count - 1
    batch_count: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued, running, done, failed, cancelled
    progress: Mapped[float] = mapped_column(Float)  # 0..1 of this chunk
    attempts: Mapped[int] = mapped_column(Integer)
    lease_owner: Mapped[str | None] = mapped_column(String(200))  # kept once done: which worker made it
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    publish_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)  # the outbox flag, as on jobs
    storage_key: Mapped[str | None] = mapped_column(String(500))
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(16))  # status, stage, progress, metrics, warning, error
    status: Mapped[str | None] = mapped_column(String(16))
    stage: Mapped[str | None] = mapped_column(String(16))
    progress: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class StoredFileColumns:
    """The columns of a row that stands for one object in storage (an upload or an artifact, of a job or an evaluation)."""

    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(100))
    storage_key: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


def stored_file_values(stored: Any, content_type: str, created_at: datetime) -> dict[str, Any]:
    """StoredFileColumns' values for an object just stored (a service.storage.StoredObject: key, size, sha256)."""
    return {"size": stored.size, "sha256": stored.sha256, "content_type": content_type, "storage_key": stored.key, "created_at": created_at}


class Artifact(StoredFileColumns, Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))


class Upload(StoredFileColumns, Base):
    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    class_name: Mapped[str] = mapped_column(String(300))
    position: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str | None] = mapped_column(String(300))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)


class ServiceCounter(Base):
    """Monotonic counts of what the reaper did, kept in the database: every process (the API's reaper, each worker's)
    adds to the same row in the transaction that acts, so /metrics reports the whole service, restarts included."""

    __tablename__ = "service_counters"
    # Names in service.jobs.COUNTERS.
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class WebhookSecret(Base):
    """The signing secret of a tenant's webhooks ("open" for jobs of an open-mode service)."""

    __tablename__ = "webhook_secrets"

    owner: Mapped[str] = mapped_column(String(40), primary_key=True)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """One event to deliver to one URL (the outbox row), with its state over the attempts."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # also the webhook-id header: receivers deduplicate on it
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(String(2000))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookAttempt(Base):
    """One POST of a delivery: when, what the receiver answered (or why it could not be reached), how long it took."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    seconds: Mapped[float] = mapped_column(Float)


class Evaluation(Base):
    """A succeeded job's exported student (and its teacher) scored on labelled images a user sent (service.evaluations).

    queued -> running -> succeeded | failed; a lease and an outbox flag as jobs have, so that none is lost or stuck."""

    __tablename__ = "evaluations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)  # images per class, in the job's class order
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # accuracies and counts once succeeded
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    publish_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)  # the outbox flag, as on jobs
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class EvaluationImage(StoredFileColumns, Base):
    """One labelled image of an evaluation, stored as sent (decoded and checked first)."""

    __tablename__ = "evaluation_images"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), index=True)
    class_name: Mapped[str] = mapped_column(String(300))
    position: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str | None] = mapped_column(String(300))


class EvaluationArtifact(StoredFileColumns, Base):
    """A file an evaluation produced (confusion matrix, mistakes grid, the full result)."""

    __tablename__ = "evaluation_artifacts"
    __table_args__ = (UniqueConstraint("evaluation_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))


class Pool(Base):
    """A tenant's unlabelled images from their own domain (service.pools): a job distils on them beside its synthesized
    images. Its images are immutable once created; a pool a queued or running job uses cannot be deleted."""

    __tablename__ = "pools"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"), index=True)  # NULL: created in open mode
    name: Mapped[str | None] = mapped_column(String(200))  # the user's label, not unique
    image_count: Mapped[int] = mapped_column(Integer)  # distinct images (duplicates by sha256 are stored once)
    duplicates: Mapped[int] = mapped_column(Integer)  # images sent again within the same request, dropped
    bytes: Mapped[int] = mapped_column(BigInteger)  # stored bytes of its images
    thumbnails_key: Mapped[str] = mapped_column(String(500))  # a grid of its first images (PNG)
    thumbnails_size: Mapped[int] = mapped_column(Integer)
    thumbnails_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PoolImage(StoredFileColumns, Base):
    """One image of a pool, stored as sent (decoded and checked first)."""

    __tablename__ = "pool_images"
    __table_args__ = (UniqueConstraint("pool_id", "sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pool_id: Mapped[str] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str | None] = mapped_column(String(300))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)


class PoolEmbedding(Base):
    """A pool's teacher embeddings (core.pools) built by a worker ahead of any job (service.pool_embeddings), asked for
    when the pool is created: queued -> running -> succeeded | failed, with a lease and an outbox flag as evaluations."""

    __tablename__ = "pool_embeddings"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    pool_id: Mapped[str] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"), index=True)
    teacher: Mapped[str] = mapped_column(String(300))
    views: Mapped[int] = mapped_column(Integer)  # synthesis.pool_views of the jobs that will load them
    status: Mapped[str] = mapped_column(String(16), index=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # what a job's metrics.pool_embeddings says, once succeeded
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    publish_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)  # the outbox flag, as on jobs
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
