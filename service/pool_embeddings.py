"""Pool embeddings built ahead: a pool created with a ``teacher`` gets a worker to embed its images and views with that
teacher (core.pools) before any job uses it, so that its first job loads them instead of paying the teacher's passes.

queued -> running -> succeeded | failed, as an evaluation: created in the pool's own transaction with an outbox flag
(``publish_due_at``) that a successful publish clears and the reaper acts on, and a running one holds a lease
(service.leases) that the reaper takes back when its worker dies: it is queued again (the embeddings already stored are
found whole and kept) or failed after ``max_attempts``. Every change is a compare-and-set on the row, so a duplicate
message runs it once. The rows go with their pool; a pool is not deleted while one is queued or running.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.ids import new_id
from service.leases import LeasedTable
from service.models import PoolEmbedding, utcnow

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED)
TERMINAL = frozenset({SUCCEEDED, FAILED})
ACTIVE = (QUEUED, RUNNING)  # a worker will read the pool's images: the pool stays
ID_PREFIX = "pemb"
POOL_EMBEDDINGS: Final = LeasedTable(PoolEmbedding, ("id",))  # their leases and outbox flags (service.leases)


def new_embedding_id() -> str:
    return new_id(ID_PREFIX)


def create(session: Session, *, pool_id: str, teacher: str, views: int, publish_grace_seconds: float) -> PoolEmbedding:
    """A queued embedding of the pool (in the caller's transaction, the pool's own), flagged for publication."""
    now = utcnow()
    embedding = PoolEmbedding(
        id=new_embedding_id(),
        pool_id=pool_id,
        teacher=teacher,
        views=views,
        status=QUEUED,
        attempts=0,
        publish_due_at=now + timedelta(seconds=publish_grace_seconds),
        created_at=now,
        updated_at=now,
    )
    session.add(embedding)
    session.flush()
    return embedding


def list_for_pools(session: Session, pool_ids: Sequence[str]) -> dict[str, list[PoolEmbedding]]:
    """Each pool's embeddings, newest first (ids are time-ordered)."""
    found: dict[str, list[PoolEmbedding]] = {pool_id: [] for pool_id in pool_ids}
    if pool_ids:
        query = select(PoolEmbedding).where(PoolEmbedding.pool_id.in_(tuple(pool_ids))).order_by(PoolEmbedding.id.desc())
        for row in session.scalars(query):
            found[row.pool_id].append(row)
    return found


def active(session: Session, pool_id: str) -> list[str]:
    """Ids of the pool's queued or running embeddings."""
    query = select(PoolEmbedding.id).where(PoolEmbedding.pool_id == pool_id, PoolEmbedding.status.in_(ACTIVE))
    return list(session.scalars(query.order_by(PoolEmbedding.id)))


# ------------------------------------------------------------------------------------------
# Worker side
# ------------------------------------------------------------------------------------------


def claim(session: Session, embedding_id: str, owner: str, lease_seconds: float, max_attempts: int) -> PoolEmbedding | None:
    """Take a queued embedding (or one whose worker's lease lapsed) for this worker; None when it is not ours to run."""
    embedding = session.get(PoolEmbedding, embedding_id)
    now = utcnow()
    if embedding is None or embedding.status in TERMINAL or not POOL_EMBEDDINGS.lapsed(embedding, now):
        return None
    same = [PoolEmbedding.status == embedding.status, PoolEmbedding.attempts == embedding.attempts]
    if embedding.attempts >= max_attempts:
        finish(session, embedding_id, embedding.lease_owner, FAILED, code="worker_lost",
               message=f"the pool embedding's worker was lost {embedding.attempts} times", conditions=same)  # fmt: skip
        return None
    if not POOL_EMBEDDINGS.claim(session, (embedding_id,), same, owner, lease_seconds, now):
        return None
    session.refresh(embedding)
    return embedding


def renew_lease(session: Session, embedding_id: str, owner: str, lease_seconds: float) -> bool:
    return POOL_EMBEDDINGS.renew(session, (embedding_id,), owner, lease_seconds)


def finish(
    session: Session,
    embedding_id: str,
    owner: str | None,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    code: str | None = None,
    message: str | None = None,
    conditions: Sequence[Any] | None = None,
) -> bool:
    """End an embedding held by ``owner`` (default conditions: its lease, still running) with its result or error."""
    assert status in TERMINAL
    if conditions is None:
        conditions = [POOL_EMBEDDINGS.owned_by(owner), PoolEmbedding.status == RUNNING]
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "lease_owner": None, "lease_expires_at": None,
                              "publish_due_at": None}  # fmt: skip
    if result is not None:
        values["result"] = result
    if code is not None:
        values.update(error_code=code, error_message=message)
    return POOL_EMBEDDINGS.cas(session, (embedding_id,), conditions, **values)


def reap_expired(session: Session, max_attempts: int, now: datetime | None = None, publish_grace_seconds: float = 0.0) -> list[str]:
    """Running embeddings whose worker stopped renewing: queued again (flagged for publication) or failed; the ids requeued."""
    now = now or utcnow()
    requeued = []
    for embedding in POOL_EMBEDDINGS.expired(session, now):
        embedding_id, attempts, same = embedding.id, embedding.attempts, POOL_EMBEDDINGS.same_expired(embedding, now)
        if attempts >= max_attempts:
            finish(session, embedding_id, embedding.lease_owner, FAILED, code="worker_lost",
                   message=f"the pool embedding's worker was lost {attempts} times", conditions=same)  # fmt: skip
        elif POOL_EMBEDDINGS.requeue(session, (embedding_id,), same, now, publish_grace_seconds):
            requeued.append(embedding_id)
    return requeued


def unpublished(session: Session, *, due_by: datetime, including: Sequence[str] = (), limit: int = 100) -> list[tuple[str, datetime]]:
    """(id, publish_due_at) of queued embeddings to publish: due by ``due_by``, or flagged among ``including``."""
    found = POOL_EMBEDDINGS.unpublished(session, due_by=due_by, including=[(embedding_id,) for embedding_id in including], limit=limit)
    return [(embedding_id, due_at) for (embedding_id,), due_at in found]


def mark_published(session: Session, embedding_id: str, publish_due_at: datetime) -> bool:
    return POOL_EMBEDDINGS.mark_published(session, (embedding_id,), publish_due_at)
