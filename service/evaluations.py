"""Evaluations: a succeeded job's exported student, and its teacher, scored on labelled images a user sends.

queued -> running -> succeeded | failed. Like a job, an evaluation is created with an outbox flag (``publish_due_at``)
that a successful publish clears and the reaper acts on, and a running one holds a lease that the reaper takes back
when its worker dies: it is queued again (scoring restarts from scratch) or failed after ``max_attempts``. Every
change is a compare-and-set on the row, so a duplicate message runs it once.

Storage: the images live under the job's upload prefix and the results under its artifact prefix, so deleting the
job removes them with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service import webhooks
from service.errors import ServiceError
from service.ids import new_id
from service.jobs import SUCCEEDED as JOB_SUCCEEDED
from service.jobs import TenantScope, get_job
from service.leases import LeasedTable
from service.models import Evaluation, EvaluationArtifact, EvaluationImage, Job, stored_file_values, utcnow
from service.storage import StoredObject

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED)
TERMINAL = frozenset({SUCCEEDED, FAILED})
ID_PREFIX = "eval"
EVALUATIONS: Final = LeasedTable(Evaluation, ("id",))  # evaluations' leases and outbox flags (service.leases)


@dataclass
class NewImage:
    class_name: str
    position: int
    filename: str | None
    content_type: str
    stored: StoredObject
    id: str


def new_evaluation_id() -> str:
    return new_id(ID_PREFIX)


def new_image_id() -> str:
    return new_id("evimg")


def image_key(job_id: str, evaluation_id: str, image_id: str) -> str:
    return f"uploads/{job_id}/evaluations/{evaluation_id}/{image_id}"


def artifact_key(job_id: str, evaluation_id: str, name: str) -> str:
    return f"artifacts/{job_id}/evaluations/{evaluation_id}/{name}"


def prefixes(job_id: str, evaluation_id: str) -> tuple[str, str]:
    """Storage prefixes of one evaluation (inside its job's, see service.storage.job_prefixes)."""
    return f"uploads/{job_id}/evaluations/{evaluation_id}", f"artifacts/{job_id}/evaluations/{evaluation_id}"


def evaluable_job(session: Session, job_id: str, tenant_id: TenantScope) -> Job:
    """The tenant's job, refused (409) unless it succeeded: only a finished student can be scored."""
    job = get_job(session, job_id, tenant_id)
    if job.status != JOB_SUCCEEDED:
        raise ServiceError("job_not_succeeded", f"job {job_id!r} is {job.status}; only a succeeded job's student can be evaluated", 409)
    return job


def create(
    session: Session, *, evaluation_id: str, job_id: str, counts: dict[str, int], images: Sequence[NewImage], publish_grace_seconds: float
) -> Evaluation:
    """A queued evaluation and its image rows, flagged for publication (as ``service.jobs.create_job``)."""
    now = utcnow()
    evaluation = Evaluation(
        id=evaluation_id,
        job_id=job_id,
        status=QUEUED,
        counts=counts,
        attempts=0,
        publish_due_at=now + timedelta(seconds=publish_grace_seconds),
        created_at=now,
        updated_at=now,
    )
    session.add(evaluation)
    session.flush()
    session.add_all(
        EvaluationImage(
            id=image.id,
            evaluation_id=evaluation_id,
            class_name=image.class_name,
            position=image.position,
            filename=image.filename,
            **stored_file_values(image.stored, image.content_type, now),
        )
        for image in images
    )
    session.flush()
    return evaluation


def get(session: Session, job_id: str, evaluation_id: str, tenant_id: TenantScope) -> Evaluation:
    get_job(session, job_id, tenant_id)  # 404 for another tenant's job, before anything about its evaluations
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None or evaluation.job_id != job_id:
        raise ServiceError("evaluation_not_found", f"job {job_id!r} has no evaluation {evaluation_id!r}", 404)
    return evaluation


def list_for_job(session: Session, job_id: str) -> list[Evaluation]:
    """Newest first (ids are time-ordered)."""
    return list(session.scalars(select(Evaluation).where(Evaluation.job_id == job_id).order_by(Evaluation.id.desc())))


def artifacts(session: Session, evaluation_ids: Sequence[str]) -> dict[str, list[EvaluationArtifact]]:
    """Artifact rows by evaluation id, each list sorted by name."""
    found: dict[str, list[EvaluationArtifact]] = {eid: [] for eid in evaluation_ids}
    if evaluation_ids:
        query = select(EvaluationArtifact).where(EvaluationArtifact.evaluation_id.in_(tuple(evaluation_ids)))
        for row in session.scalars(query.order_by(EvaluationArtifact.name)):
            found[row.evaluation_id].append(row)
    return found


def get_artifact(session: Session, evaluation_id: str, name: str) -> EvaluationArtifact:
    query = select(EvaluationArtifact).where(EvaluationArtifact.evaluation_id == evaluation_id, EvaluationArtifact.name == name)
    artifact = session.scalar(query)
    if artifact is None:
        raise ServiceError("artifact_not_found", f"evaluation {evaluation_id!r} has no artifact {name!r}", 404)
    return artifact


def images(session: Session, evaluation_id: str) -> list[EvaluationImage]:
    query = select(EvaluationImage).where(EvaluationImage.evaluation_id == evaluation_id)
    return list(session.scalars(query.order_by(EvaluationImage.class_name, EvaluationImage.position)))


def delete_rows(session: Session, job_id: str, evaluation_id: str | None = None) -> None:
    """The rows of one evaluation of the job, or of all of them (the caller removes the storage prefixes after commit)."""
    ids = [evaluation_id] if evaluation_id else list(session.scalars(select(Evaluation.id).where(Evaluation.job_id == job_id)))
    if not ids:
        return
    for table in (EvaluationImage, EvaluationArtifact):
        session.execute(delete(table).where(table.evaluation_id.in_(ids)))
    session.execute(delete(Evaluation).where(Evaluation.id.in_(ids)))


def delete_one(session: Session, job_id: str, evaluation_id: str, tenant_id: TenantScope) -> tuple[str, str]:
    """Remove a queued-and-unclaimed or finished evaluation; a running one is refused (409). Returns its prefixes."""
    evaluation = get(session, job_id, evaluation_id, tenant_id)
    if evaluation.status == RUNNING:
        raise ServiceError("evaluation_active", f"evaluation {evaluation_id!r} is running; delete it once it ends", 409)
    delete_rows(session, job_id, evaluation_id)
    session.flush()
    return prefixes(job_id, evaluation_id)


# ------------------------------------------------------------------------------------------
# Worker side
# ------------------------------------------------------------------------------------------


def claim(session: Session, evaluation_id: str, owner: str, lease_seconds: float, max_attempts: int) -> Evaluation | None:
    """Take a queued evaluation (or one whose worker's lease lapsed) for this worker; None when it is not ours to run."""
    evaluation = session.get(Evaluation, evaluation_id)
    now = utcnow()
    if evaluation is None or evaluation.status in TERMINAL or not EVALUATIONS.lapsed(evaluation, now):
        return None
    same = [Evaluation.status == evaluation.status, Evaluation.attempts == evaluation.attempts]
    if evaluation.attempts >= max_attempts:
        finish(session, evaluation_id, evaluation.lease_owner, FAILED, code="worker_lost",
               message=f"the evaluation's worker was lost {evaluation.attempts} times", conditions=same)  # fmt: skip
        return None
    if not EVALUATIONS.claim(session, (evaluation_id,), same, owner, lease_seconds, now):
        return None
    session.refresh(evaluation)
    return evaluation


def renew_lease(session: Session, evaluation_id: str, owner: str, lease_seconds: float) -> bool:
    return EVALUATIONS.renew(session, (evaluation_id,), owner, lease_seconds)


def finish(
    session: Session,
    evaluation_id: str,
    owner: str | None,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    artifacts: Sequence[tuple[str, str, StoredObject]] = (),
    code: str | None = None,
    message: str | None = None,
    conditions: Sequence[Any] | None = None,
) -> bool:
    """End an evaluation held by ``owner``: status, result, artifact rows and its webhook in one transaction."""
    assert status in TERMINAL
    if conditions is None:
        conditions = [EVALUATIONS.owned_by(owner), Evaluation.status == RUNNING]
    now = utcnow()
    values: dict[str, Any] = {"status": status, "finished_at": now, "lease_owner": None, "lease_expires_at": None, "publish_due_at": None}
    if result is not None:
        values["result"] = result
    if code is not None:
        values.update(error_code=code, error_message=message)
    if not EVALUATIONS.cas(session, (evaluation_id,), conditions, **values):
        return False
    session.add_all(
        EvaluationArtifact(evaluation_id=evaluation_id, name=name, **stored_file_values(stored, content_type, now))
        for name, content_type, stored in artifacts
    )
    evaluation = session.get(Evaluation, evaluation_id)
    job = session.get(Job, evaluation.job_id) if evaluation is not None else None
    if job is not None and evaluation is not None and status == SUCCEEDED:
        session.flush()
        session.refresh(evaluation)
        webhooks.enqueue(session, job, "evaluation.succeeded", webhook_data(evaluation))
    return True


def webhook_data(evaluation: Evaluation) -> dict[str, Any]:
    result = evaluation.result or {}
    return {
        "id": evaluation.id,
        "job_id": evaluation.job_id,
        "status": evaluation.status,
        "student_accuracy": (result.get("student") or {}).get("accuracy"),
        "teacher_accuracy": (result.get("teacher") or {}).get("accuracy"),
        "url": f"/v1/jobs/{evaluation.job_id}/evaluations/{evaluation.id}",
    }


def reap_expired(session: Session, max_attempts: int, now: datetime | None = None, publish_grace_seconds: float = 0.0) -> list[str]:
    """Running evaluations whose worker stopped renewing: queued again (flagged for publication) or failed; the ids requeued."""
    now = now or utcnow()
    requeued = []
    for evaluation in EVALUATIONS.expired(session, now):
        evaluation_id, attempts, same = evaluation.id, evaluation.attempts, EVALUATIONS.same_expired(evaluation, now)
        if attempts >= max_attempts:
            finish(session, evaluation_id, evaluation.lease_owner, FAILED, code="worker_lost",
                   message=f"the evaluation's worker was lost {attempts} times", conditions=same)  # fmt: skip
        elif EVALUATIONS.requeue(session, (evaluation_id,), same, now, publish_grace_seconds):
            requeued.append(evaluation_id)
    return requeued


def unpublished(session: Session, *, due_by: datetime, including: Sequence[str] = (), limit: int = 100) -> list[tuple[str, datetime]]:
    """(id, publish_due_at) of queued evaluations to publish: due by ``due_by``, or flagged among ``including``."""
    found = EVALUATIONS.unpublished(session, due_by=due_by, including=[(evaluation_id,) for evaluation_id in including], limit=limit)
    return [(evaluation_id, due_at) for (evaluation_id,), due_at in found]


def mark_published(session: Session, evaluation_id: str, publish_due_at: datetime) -> bool:
    return EVALUATIONS.mark_published(session, (evaluation_id,), publish_due_at)
