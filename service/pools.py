"""Image pools: a tenant's unlabelled images from their own domain, kept to be distilled on by later jobs.

Created whole or not at all (the files first, then the rows in one transaction; any failure removes the files), owned
by one tenant (another tenant's pool is not found, 404), listed newest first, deleted with its files unless a queued or
running job, or a queued or running embedding of it (service.pool_embeddings), uses it (409 ``pool_in_use``). An image
sent twice in one request is stored once (by sha256). Created with a teacher, the pool's transaction also queues that
teacher's embeddings of it (service.submissions.submit_pool publishes their message).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from service import jobs, pool_embeddings
from service.db import session_scope
from service.errors import ServiceError
from service.ids import new_id
from service.jobs import ANY_TENANT, TenantScope
from service.models import Job, Pool, PoolEmbedding, PoolImage, stored_file_values, utcnow
from service.storage import Storage, StorageError, StorageFull
from service.uploads import SubmittedImage

THUMBNAILS_FILE = "thumbnails.png"
THUMBNAIL_SIDE = 64  # pixels of each image in the grid
THUMBNAIL_COLUMNS = 8
THUMBNAIL_IMAGES = 64  # the first images of the pool, in the order sent
IN_USE = (jobs.QUEUED, jobs.RUNNING, jobs.CANCELLING)  # a job in these states reads the pool's images


@dataclass(frozen=True)
class EmbeddingRequest:
    """A teacher's embeddings of the pool to build ahead of its first job (service.pool_embeddings)."""

    teacher: str
    views: int  # synthesis.pool_views of the jobs that will load them
    publish_grace_seconds: float  # the outbox flag's grace (Settings.publish_grace_seconds)


@dataclass(frozen=True)
class Thumbnails:
    """A pool's thumbnail grid as a stored file (api.files.StoredFile), served as artifacts are."""

    name: str
    size: int
    sha256: str
    content_type: str
    storage_key: str

    @classmethod
    def of(cls, pool: Pool) -> Thumbnails:
        return cls(THUMBNAILS_FILE, pool.thumbnails_size, pool.thumbnails_sha256, "image/png", pool.thumbnails_key)


def prefix(pool_id: str) -> str:
    return f"pools/{pool_id}"


def image_key(pool_id: str, sha256: str) -> str:
    return f"{prefix(pool_id)}/images/{sha256}"


def thumbnails_png(images: Sequence[SubmittedImage]) -> bytes:
    """A grid of the first THUMBNAIL_IMAGES images, each fitted into a THUMBNAIL_SIDE square."""
    shown = list(images[:THUMBNAIL_IMAGES])
    rows = max(1, -(-len(shown) // THUMBNAIL_COLUMNS))
    grid = Image.new("RGB", (THUMBNAIL_COLUMNS * THUMBNAIL_SIDE, rows * THUMBNAIL_SIDE), "white")
    for index, image in enumerate(shown):
        with Image.open(io.BytesIO(image.content)) as opened:
            thumb = opened.convert("RGB")
            thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            x = (index % THUMBNAIL_COLUMNS) * THUMBNAIL_SIDE + (THUMBNAIL_SIDE - thumb.width) // 2
            y = (index // THUMBNAIL_COLUMNS) * THUMBNAIL_SIDE + (THUMBNAIL_SIDE - thumb.height) // 2
            grid.paste(thumb, (x, y))
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return buffer.getvalue()


def create(
    images: Sequence[SubmittedImage],
    name: str | None,
    tenant_id: str | None,
    factory: sessionmaker[Session],
    storage: Storage,
    embedding: EmbeddingRequest | None = None,
) -> Pool:
    """Store the distinct images and the thumbnails, then the rows (with ``embedding``, its queued row too, flagged for
    publication); on any failure nothing is left behind."""
    pool_id = new_id("pool")
    distinct: dict[str, SubmittedImage] = {}
    for image in images:
        distinct.setdefault(hashlib.sha256(image.content).hexdigest(), image)
    try:
        now = utcnow()
        rows = []
        for sha256, image in distinct.items():
            stored = storage.put(image_key(pool_id, sha256), image.content)
            values = stored_file_values(stored, image.content_type, now)
            rows.append(PoolImage(pool_id=pool_id, position=image.position, filename=image.filename, width=image.width,
                                  height=image.height, **values))  # fmt: skip
        thumbnails = storage.put(f"{prefix(pool_id)}/{THUMBNAILS_FILE}", thumbnails_png(list(distinct.values())))
        pool = Pool(
            id=pool_id,
            tenant_id=tenant_id,
            name=name,
            image_count=len(distinct),
            duplicates=len(images) - len(distinct),
            bytes=sum(row.size for row in rows),
            thumbnails_key=thumbnails.key,
            thumbnails_size=thumbnails.size,
            thumbnails_sha256=thumbnails.sha256,
            created_at=now,
        )
        with session_scope(factory) as session:
            session.add(pool)
            session.add_all(rows)
            if embedding is not None:
                session.flush()  # the pool's row before the embedding's, which refers to it
                pool_embeddings.create(session, pool_id=pool_id, teacher=embedding.teacher, views=embedding.views,
                                       publish_grace_seconds=embedding.publish_grace_seconds)  # fmt: skip
    except BaseException as exc:
        storage.delete_prefix(prefix(pool_id))
        if isinstance(exc, StorageError):
            raise ServiceError(exc.code, f"the pool could not be stored: {exc}", 507 if isinstance(exc, StorageFull) else 503) from None
        raise
    with session_scope(factory) as session:
        return session.get_one(Pool, pool_id)


def get(session: Session, pool_id: str, tenant_id: TenantScope, *, lock: bool = False) -> Pool:
    """Another tenant's pool is not found either (404): its existence is not revealed. ``lock``: a row lock (PostgreSQL;
    SQLite serialises writers anyway), so that a job naming the pool and the pool's deletion cannot both commit."""
    pool = session.get(Pool, pool_id, with_for_update=lock)
    if pool is None or not (tenant_id is ANY_TENANT or pool.tenant_id == tenant_id):
        raise ServiceError("pool_not_found", f"no pool {pool_id!r}", 404)
    return pool


def list_for_tenant(session: Session, tenant_id: str | None) -> list[Pool]:
    """Newest first (ids are time-ordered)."""
    condition = Pool.tenant_id.is_(None) if tenant_id is None else Pool.tenant_id == tenant_id
    return list(session.scalars(select(Pool).where(condition).order_by(Pool.id.desc())))


def jobs_using(session: Session, pool_id: str) -> list[str]:
    """Ids of the queued, running or cancelling jobs that read the pool."""
    return list(session.scalars(select(Job.id).where(Job.pool_id == pool_id, Job.status.in_(IN_USE)).order_by(Job.id)))


def delete_one(session: Session, pool_id: str, tenant_id: TenantScope) -> str:
    """Delete the rows (the caller commits, then removes the files under the returned prefix); 409 while in use."""
    get(session, pool_id, tenant_id, lock=True)
    using, embedding = jobs_using(session, pool_id), pool_embeddings.active(session, pool_id)
    if using or embedding:
        users = [f"{len(using)} queued or running job(s)"] if using else []
        users += [f"{len(embedding)} queued or running embedding(s)"] if embedding else []
        ids = ", ".join([*using, *embedding][:5])
        message = f"pool {pool_id!r} is used by {' and '.join(users)} ({ids}); delete it once they end"
        raise ServiceError("pool_in_use", message, 409, {"jobs": using, "embeddings": embedding})
    return delete_rows(session, pool_id)


def delete_rows(session: Session, pool_id: str) -> str:
    """The pool's rows, its embeddings' included, whatever uses it (the caller checked, or withdraws a pool just made);
    returns the storage prefix of its files, for the caller to remove after commit."""
    for table in (PoolImage, PoolEmbedding):
        session.execute(delete(table).where(table.pool_id == pool_id))
    session.execute(delete(Pool).where(Pool.id == pool_id))
    return prefix(pool_id)


def images(session: Session, pool_id: str) -> list[PoolImage]:
    """The pool's image rows in the order they were sent."""
    return list(session.scalars(select(PoolImage).where(PoolImage.pool_id == pool_id).order_by(PoolImage.position)))
