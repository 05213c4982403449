"""The job state machine and its repository: every status change goes through here, as a compare-and-set.

queued -> running -> succeeded | failed | cancelled; running -> cancelling -> cancelled; queued -> cancelled.
A running job holds a lease (owner, expiry) that its worker renews; a lease that lapses means the worker
died, and the reaper requeues the job (it restarts from scratch) or fails it after ``max_attempts``.

A queued job's message is published after the commit that queues it, so a publisher that dies in between would leave
it queued forever. Hence a transactional outbox: that same commit sets ``publish_due_at``, a successful publish clears
it, and the reaper publishes the queued jobs still flagged after it. A job may thus get two messages; ``claim`` is a
compare-and-set that runs it once and drops the other.

A job whose synthesis was split over workers (``synthesis_chunks`` set; service.chunks) holds no lease while its chunks
run, and ``claim`` leaves it alone; once its distillation's worker holds the lease again, a lapse of that lease queues
the distillation again (not the whole job: its chunks are done and stored).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from core.estimate import STAGES
from service import webhooks
from service.errors import ServiceError
from service.ids import new_id
from service.leases import LeasedTable
from service.models import Artifact, Evaluation, Job, JobChunk, JobEvent, ServiceCounter, Tenant, Upload, stored_file_values, utcnow
from service.storage import StoredObject, job_prefixes

QUEUED, RUNNING, CANCELLING = "queued", "running", "cancelling"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = frozenset({QUEUED, RUNNING, CANCELLING})
FIRST_STAGE = STAGES[STAGES.index("preparing")]  # what a started job reports first (a pool's embeddings may come before)
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, CANCELLED, FAILED}),
    RUNNING: frozenset({RUNNING, CANCELLING, SUCCEEDED, FAILED, QUEUED}),  # QUEUED: requeued after a lost worker
    CANCELLING: frozenset({CANCELLED, SUCCEEDED, FAILED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}

FIRST_STAGE = STAGES[STAGES.index("preparing")]  # what a started job reports first (a pool's embeddings may come before)


class _AnyTenant:
    """The scope of the worker, the reaper and operators: every job, whoever owns it."""

    def __repr__(self) -> str:
        return "ANY_TENANT"


ANY_TENANT: Final = _AnyTenant()
# A tenant id; None: the anonymous tenant of an open service (jobs with no tenant); ANY_TENANT: no scoping.
TenantScope = str | None | _AnyTenant
JOBS: Final = LeasedTable(Job, ("id",))  # jobs' leases and outbox flags (service.leases)


def _in_scope(job: Job, tenant_id: TenantScope) -> bool:
    return isinstance(tenant_id, _AnyTenant) or job.tenant_id == tenant_id


def _tenant_condition(tenant_id: str | None) -> Any:
    return Job.tenant_id.is_(None) if tenant_id is None else Job.tenant_id == tenant_id


def scoped_idempotency_key(tenant_id: str | None, key: str) -> str:
    """Keys are per tenant: another tenant's identical key neither replays nor conflicts with this one's."""
    return key if tenant_id is None else f"{tenant_id}:{key}"


def can_transition(current: str, new: str) -> bool:
    return new in TRANSITIONS[current]


@dataclass
class NewUpload:
    class_name: str
    position: int
    filename: str | None
    content_type: str
    width: int
    height: int
    stored: StoredObject
    id: str = field(default_factory=lambda: new_id("upl"))


def add_event(
    session: Session,
    job_id: str,
    kind: str,
    *,
    status: str | None = None,
    stage: str | None = None,
    progress: float | None = None,
    message: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    session.add(
        JobEvent(job_id=job_id, created_at=utcnow(), kind=kind, status=status, stage=stage, progress=progress, message=message, data=data)
    )
    if status in TERMINAL:  # every end of a job passes here: its webhook joins the same transaction (the outbox)
        _job_ended(session, job_id, status)


def _job_ended(session: Session, job_id: str, status: str) -> None:
    job = session.get(Job, job_id)
    if job is None or not job.webhook_url:
        return
    session.flush()
    session.refresh(job)  # the values the ending update just wrote
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    data = {"id": job.id, "status": status, "error": error, "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "url": f"/v1/jobs/{job.id}"}  # fmt: skip
    webhooks.enqueue(session, job, f"job.{status}", data)


def create_job(
    session: Session,
    *,
    job_id: str,
    spec: dict[str, Any],
    uploads: Sequence[NewUpload] = (),
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    tenant_id: str | None = None,
    publish_grace_seconds: float = 0.0,
    estimated_seconds: float | None = None,
    webhook_url: str | None = None,
    webhook_events: list[str] | None = None,
    pool_id: str | None = None,
) -> Job:
    """A queued job, flagged for publication: the reaper publishes it ``publish_grace_seconds`` from now unless the
    caller publishes it first and calls ``mark_published`` (0: the caller leaves the publishing to the reaper)."""
    now = utcnow()
    job = Job(
        id=job_id,
        tenant_id=tenant_id,
        status=QUEUED,
        progress=0.0,
        spec=spec,
        pool_id=pool_id,
        seed=int(spec["seed"]),
        teacher=str(spec["teacher"]),
        idempotency_key=None if idempotency_key is None else scoped_idempotency_key(tenant_id, idempotency_key),
        request_hash=request_hash,
        attempts=0,
        estimated_seconds=estimated_seconds,
        webhook_url=webhook_url,
        webhook_events=webhook_events,
        publish_due_at=now + timedelta(seconds=publish_grace_seconds),
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    for upload in uploads:
        session.add(
            Upload(
                id=upload.id,
                job_id=job_id,
                class_name=upload.class_name,
                position=upload.position,
                filename=upload.filename,
                width=upload.width,
                height=upload.height,
                **stored_file_values(upload.stored, upload.content_type, now),
            )
        )
    add_event(session, job_id, "status", status=QUEUED, progress=0.0, message="job queued")
    return job


def find_by_idempotency_key(session: Session, key: str, tenant_id: str | None = None) -> Job | None:
    return session.scalar(select(Job).where(Job.idempotency_key == scoped_idempotency_key(tenant_id, key)))


def get_job(session: Session, job_id: str, tenant_id: TenantScope = ANY_TENANT) -> Job:
    """Another tenant's job is not found either (404, not 403): its existence is not revealed."""
    job = session.get(Job, job_id)
    if job is None or not _in_scope(job, tenant_id):
        raise ServiceError("job_not_found", f"no job {job_id!r}", 404)
    return job


def count_active_jobs(session: Session, tenant_id: str | None, *, lock: bool = False) -> int:
    """Queued, running and cancelling jobs of a tenant; ``lock`` serialises concurrent submissions of one tenant
    (a row lock on the tenant on PostgreSQL; SQLite serialises writers anyway)."""
    if lock and tenant_id is not None:
        session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    query = select(func.count()).select_from(Job).where(_tenant_condition(tenant_id), Job.status.in_(tuple(ACTIVE)))
    return int(session.scalar(query) or 0)


def list_jobs(
    session: Session, *, status: str | None = None, after: str | None = None, limit: int = 20, tenant_id: TenantScope = ANY_TENANT
) -> tuple[list[Job], bool]:
    """Newest first; ``after`` is the last id of the previous page."""
    query = select(Job).order_by(Job.id.desc()).limit(limit + 1)
    if not isinstance(tenant_id, _AnyTenant):
        query = query.where(_tenant_condition(tenant_id))
    if status is not None:
        query = query.where(Job.status == status)
    if after is not None:
        query = query.where(Job.id < after)
    jobs = list(session.scalars(query))
    return jobs[:limit], len(jobs) > limit


def list_events(session: Session, job_id: str, *, after: int | None = None, limit: int = 100) -> tuple[list[JobEvent], bool]:
    """Oldest first; ``after`` is the last event id of the previous page."""
    query = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id).limit(limit + 1)
    if after is not None:
        query = query.where(JobEvent.id > after)
    events = list(session.scalars(query))
    return events[:limit], len(events) > limit


def list_artifacts(session: Session, job_id: str) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)))


def get_artifact(session: Session, job_id: str, name: str) -> Artifact:
    artifact = session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))
    if artifact is None:
        raise ServiceError("artifact_not_found", f"job {job_id!r} has no artifact {name!r}", 404)
    return artifact


def list_uploads(session: Session, job_id: str) -> list[Upload]:
    return list(session.scalars(select(Upload).where(Upload.job_id == job_id).order_by(Upload.class_name, Upload.position)))


def _cas(session: Session, job_id: str, conditions: Sequence[Any], **values: Any) -> bool:
    """Compare-and-set on one job row; True when this caller made the change."""
    return JOBS.cas(session, (job_id,), conditions, **values)


def request_cancel(session: Session, job_id: str, tenant_id: TenantScope = ANY_TENANT) -> Job:
    """Idempotent: a queued job is cancelled at once, a running one becomes cancelling (its worker stops it)."""
    job = get_job(session, job_id, tenant_id)
    now = utcnow()
    if job.status == QUEUED and _cas(
        session, job_id, [Job.status == QUEUED], status=CANCELLED, finished_at=now, eta_seconds=None, publish_due_at=None
    ):
        add_event(session, job_id, "status", status=CANCELLED, message="cancelled while queued")
    elif job.status == RUNNING and _cas(session, job_id, [Job.status == RUNNING], status=CANCELLING):
        add_event(session, job_id, "status", status=CANCELLING, message="cancellation requested")
    elif job.status in (SUCCEEDED, FAILED):
        raise ServiceError("job_finished", f"job {job_id!r} already {job.status}; nothing to cancel", 409)
    session.flush()
    session.refresh(job)
    return job


def delete_job(session: Session, job_id: str, tenant_id: TenantScope = ANY_TENANT) -> tuple[str, ...]:
    """Remove a queued or finished job's rows (a running job must be cancelled first); the storage prefixes to remove
    once the transaction is committed, so that a failed commit loses no file."""
    job = get_job(session, job_id, tenant_id)
    if job.status in (RUNNING, CANCELLING):
        raise ServiceError("job_active", f"job {job_id!r} is {job.status}; cancel it and wait for it to stop first", 409)
    if session.scalar(select(Evaluation.id).where(Evaluation.job_id == job_id, Evaluation.status == RUNNING).limit(1)):
        raise ServiceError("evaluation_active", f"an evaluation of job {job_id!r} is running; delete the job once it ends", 409)
    # Its evaluations (and their images and artifacts) go by the foreign keys' ON DELETE CASCADE.
    for table in (JobEvent, Artifact, Upload, JobChunk):
        session.execute(delete(table).where(table.job_id == job_id))
    session.execute(delete(Job).where(Job.id == job_id))
    session.flush()
    return job_prefixes(job_id)


# ------------------------------------------------------------------------------------------
# Worker side: claim, heartbeat, progress, finish; the reaper
# ------------------------------------------------------------------------------------------


def _fail_worker_lost(session: Session, job_id: str, conditions: Sequence[Any], attempts: int, now: datetime) -> bool:
    """End a job whose workers were lost ``max_attempts`` times (claim and the reaper both decide this)."""
    if not _cas(
        session,
        job_id,
        conditions,
        status=FAILED,
        finished_at=now,
        lease_owner=None,
        lease_expires_at=None,
        publish_due_at=None,
        error_code="worker_lost",
        error_message=f"the job's worker was lost {attempts} times",
    ):
        return False
    add_event(session, job_id, "error", status=FAILED, message="worker lost too often", data={"code": "worker_lost"})
    return True


def claim(session: Session, job_id: str, owner: str, lease_seconds: float, max_attempts: int) -> Job | None:
    """Take a job for this worker, or None when it is not this worker's to run (finished, cancelled, or leased to a live worker).

    A redelivered job (its lease lapsed) restarts from scratch; after ``max_attempts`` it fails instead.
    """
    job = session.get(Job, job_id)
    if job is None or job.synthesis_chunks is not None:  # split: its chunks and its distillation have their own claims
        return None
    now = utcnow()
    lapsed = job.lease_expires_at is None or job.lease_expires_at < now
    if job.status == CANCELLING and lapsed:
        if finish(session, job_id, job.lease_owner, CANCELLED, message="cancelled; its worker was lost"):
            increment(session, "leases_lost")
        return None
    runnable = and_(
        Job.synthesis_chunks.is_(None),
        or_(Job.status == QUEUED, and_(Job.status == RUNNING, or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now))),
    )
    if job.status not in (QUEUED, RUNNING) or (job.status == RUNNING and not lapsed):
        return None
    taken_over = job.status == RUNNING  # its lease lapsed: the previous worker is lost (the reaper had not come by yet)
    if job.attempts >= max_attempts:
        if _fail_worker_lost(session, job_id, [runnable], job.attempts, now) and taken_over:
            increment(session, "leases_lost")
        return None
    claimed = JOBS.claim(
        session,
        (job_id,),
        [runnable],
        owner,
        lease_seconds,
        now,
        stage=FIRST_STAGE,
        progress=0.0,
        eta_seconds=None,
        metrics=None,
        heartbeat_at=now,
        finished_at=None,
        error_code=None,
        error_message=None,
    )
    if not claimed:
        return None
    if taken_over:
        increment(session, "leases_lost")
    session.refresh(job)
    add_event(session, job_id, "status", status=RUNNING, stage=FIRST_STAGE, progress=0.0, message=f"started (attempt {job.attempts})")
    return job


def is_stalled(job: Job, now: datetime, stall_after_seconds: float) -> bool:
    """A running job whose worker missed its heartbeats: still leased, but silent for ``stall_after_seconds``."""
    return (
        job.status in (RUNNING, CANCELLING)
        and job.lease_owner is not None
        and job.heartbeat_at is not None
        and (now - job.heartbeat_at).total_seconds() > stall_after_seconds
    )


def warn_stalled(session: Session, now: datetime, stall_after_seconds: float) -> list[str]:
    """A warning event, once per silence, for each leased job whose worker missed its heartbeats: the event stream says
    so at once, not when the lease lapses. The ids warned now."""
    silent = select(Job).where(
        Job.status.in_((RUNNING, CANCELLING)),
        Job.lease_owner.is_not(None),
        Job.heartbeat_at < now - timedelta(seconds=stall_after_seconds),
    )
    warned = []
    for job in session.scalars(silent):
        said = select(JobEvent.id).where(JobEvent.job_id == job.id, JobEvent.kind == "warning", JobEvent.created_at > job.heartbeat_at)
        if session.scalar(said.where(JobEvent.message.like("stalled:%")).limit(1)) is not None:
            continue  # this silence was already reported
        requeue_at = job.lease_expires_at.isoformat() if job.lease_expires_at else None
        add_event(session, job.id, "warning", stage=job.stage, progress=job.progress,
                  message=f"stalled: worker {job.lease_owner} sent no heartbeat since {job.heartbeat_at.isoformat()}; "
                  f"the job goes back to the queue at {requeue_at} unless it recovers",
                  data={"stalled": True, "heartbeat_at": job.heartbeat_at.isoformat(), "requeue_at": requeue_at})  # fmt: skip
        warned.append(job.id)
    return warned


def renew_lease(session: Session, job_id: str, owner: str, lease_seconds: float) -> str | None:
    """Extend this worker's lease; the job's status, or None when the lease is no longer this worker's."""
    if not JOBS.renew(session, (job_id,), owner, lease_seconds, (RUNNING, CANCELLING), heartbeat_at=utcnow()):
        return None
    return session.scalar(select(Job.status).where(Job.id == job_id))


def current_status(session: Session, job_id: str, owner: str) -> str | None:
    """The job's status while ``owner`` holds it, else None (deleted, or taken over)."""
    row = session.execute(select(Job.status, Job.lease_owner).where(Job.id == job_id)).first()
    if row is None or row.lease_owner != owner:
        return None
    return row.status


def record_progress(
    session: Session,
    job_id: str,
    owner: str,
    *,
    stage: str,
    progress: float,
    eta_seconds: float | None,
    eta_measured_share: float | None = None,
    metrics: dict[str, float],
    stage_changed: bool,
    budget: str | None = None,
    message: str | None = None,
    estimated_seconds: float | None = None,
) -> bool:
    """The running job's stage, progress, ETA and latest figures; ``budget``: the one its worker resolved, kept in the
    row's metrics from the first report on (so that a job submitted with "auto" shows what it got while it runs).
    ``message``: a note the metrics event carries (how the job's sample bank was obtained). ``estimated_seconds``: the
    worker's own estimate of the job (its teacher timed there), replacing the submission's."""
    values: dict[str, Any] = {"stage": stage, "progress": progress, "eta_seconds": eta_seconds}
    if estimated_seconds is not None:
        values["estimated_seconds"] = estimated_seconds
    if metrics or budget:
        values["metrics"] = {**({"budget": budget} if budget else {}), **metrics}
    if not _cas(session, job_id, JOBS.held_by(owner, (RUNNING, CANCELLING)), **values):
        return False
    if stage_changed:
        add_event(session, job_id, "stage", stage=stage, progress=progress, message=f"stage {stage}")
    add_event(session, job_id, "progress", stage=stage, progress=progress,
              data={"eta_seconds": eta_seconds, "eta_measured_share": eta_measured_share})  # fmt: skip
    if metrics:
        add_event(session, job_id, "metrics", stage=stage, progress=progress, data=metrics, message=message)
    return True


def record_resumed(session: Session, job_id: str, owner: str, *, stage: str, step: int, total: int, message: str) -> bool:
    """A ``resumed`` event: ``owner``'s attempt goes on from an earlier attempt's checkpoint at ``step`` of ``total``."""
    if session.scalar(select(Job.id).where(Job.id == job_id, *JOBS.held_by(owner, (RUNNING, CANCELLING)))) is None:
        return False
    add_event(session, job_id, "resumed", stage=stage, message=message, data={"step": step, "total": total})
    return True


def finish(
    session: Session,
    job_id: str,
    owner: str | None,
    status: str,
    *,
    code: str | None = None,
    message: str | None = None,
    artifacts: Sequence[tuple[str, str, StoredObject]] = (),
    metrics: dict[str, Any] | None = None,
) -> bool:
    """End a job held by ``owner``: the status, the error and the artifact rows in one transaction."""
    assert status in TERMINAL
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "lease_owner": None, "lease_expires_at": None, "eta_seconds": None}
    if status == SUCCEEDED:
        values.update(progress=1.0, stage=None)  # no stage is under way any more; a failed job keeps the one it failed in
    if metrics is not None:
        values["metrics"] = metrics
    if code is not None:
        values.update(error_code=code, error_message=message)
    if not _cas(session, job_id, [JOBS.owned_by(owner), Job.status.in_((RUNNING, CANCELLING))], **values):
        return False
    now = utcnow()
    for name, content_type, stored in artifacts:
        session.add(Artifact(job_id=job_id, name=name, **stored_file_values(stored, content_type, now)))
    for warning in (metrics or {}).get("warnings") or []:  # what the engine says a user should know of the result
        add_event(session, job_id, "warning", message=str(warning))
    kind = "error" if status == FAILED else "status"
    add_event(
        session,
        job_id,
        kind,
        status=status,
        progress=values.get("progress"),
        message=message or f"job {status}",
        data={"code": code} if code else None,
    )
    return True


@dataclass(frozen=True)
class ReapResult:
    requeued: list[str]
    failed: list[str]
    cancelled: list[str]
    published: list[str] = field(default_factory=list)  # filled by the reaper (service.reaper.reap_once)
    distillations: list[str] = field(default_factory=list)  # split jobs whose distillation was queued again


def reap_expired(session: Session, max_attempts: int, now: datetime | None = None, publish_grace_seconds: float = 0.0) -> ReapResult:
    """Jobs whose worker stopped renewing its lease: requeue them (flagged for publication, as ``create_job`` does; the
    caller re-sends their messages), or end them."""
    now = now or utcnow()
    result = ReapResult([], [], [])
    for job in JOBS.expired(session, now, (RUNNING, CANCELLING)):
        job_id, owner, same = job.id, job.lease_owner, JOBS.same_expired(job, now)
        if job.status == CANCELLING:
            lost = _cas(session, job_id, same, status=CANCELLED, finished_at=now, lease_owner=None, lease_expires_at=None)
            if lost:
                add_event(session, job_id, "status", status=CANCELLED, message="cancelled; its worker was lost")
                result.cancelled.append(job_id)
        elif job.attempts >= max_attempts:
            lost = _fail_worker_lost(session, job_id, same, job.attempts, now)
            if lost:
                result.failed.append(job_id)
        elif job.synthesis_chunks is not None:
            # A split job's distillation lost its worker: its chunks are done and stored, so only the distillation goes
            # back (flagged for its message, as a requeued job is); the attempt counts as a claim would count it.
            lost = _cas(session, job_id, same, lease_owner=None, lease_expires_at=None, eta_seconds=None, attempts=Job.attempts + 1,
                        publish_due_at=now + timedelta(seconds=publish_grace_seconds))  # fmt: skip
            if lost:
                add_event(session, job_id, "warning", message=f"worker {owner} lost its lease; distillation requeued")
                result.distillations.append(job_id)
                increment(session, "jobs_requeued")
        else:
            lost = JOBS.requeue(session, (job_id,), same, now, publish_grace_seconds, stage=None, progress=0.0, eta_seconds=None)
            if lost:
                add_event(session, job_id, "warning", status=QUEUED, progress=0.0, message=f"worker {owner} lost its lease; job requeued")
                result.requeued.append(job_id)
                increment(session, "jobs_requeued")
        if lost:
            increment(session, "leases_lost")
    return result


# What /metrics reports from service_counters (name: help text).
COUNTERS = {
    "leases_lost": "leases that expired: the job's worker stopped renewing (killed, hung, or cut off from the database)",
    "jobs_requeued": "jobs put back in the queue after their worker's lease expired",
    "chunks_requeued": "synthesis chunks of split jobs put back in the queue after their worker's lease expired",
}


def increment(session: Session, name: str, by: int = 1) -> None:
    """Add to a counter in the caller's transaction (created at its first use)."""
    assert name in COUNTERS
    if session.execute(update(ServiceCounter).where(ServiceCounter.name == name).values(value=ServiceCounter.value + by)).rowcount == 0:  # type: ignore[attr-defined]
        session.add(ServiceCounter(name=name, value=by))
        session.flush()


def counters(session: Session) -> dict[str, int]:
    values = dict(session.execute(select(ServiceCounter.name, ServiceCounter.value)).all())
    return {name: int(values.get(name, 0)) for name in COUNTERS}


# ------------------------------------------------------------------------------------------
# The outbox: queued jobs whose message may not be in the broker yet
# ------------------------------------------------------------------------------------------


def unpublished_jobs(session: Session, *, due_by: datetime, including: Sequence[str] = (), limit: int = 100) -> list[tuple[str, datetime]]:
    """(job id, its ``publish_due_at``) of the queued jobs to publish: those due by ``due_by``, and the flagged ones among
    ``including`` (just requeued by this caller, who publishes them at once). Oldest first; a backlog drains over rounds."""
    found = JOBS.unpublished(session, due_by=due_by, including=[(job_id,) for job_id in including], limit=limit)
    return [(job_id, due_at) for (job_id,), due_at in found]


def mark_published(session: Session, job_id: str, publish_due_at: datetime) -> bool:
    """Clear the job's outbox flag if it is still ``publish_due_at`` (service.leases)."""
    return JOBS.mark_published(session, (job_id,), publish_due_at)
