"""A pool's embedding built ahead, on SQLite and PostgreSQL: queued in the pool's own transaction and flagged for
publication (the outbox), claimed once, its lease renewed by its owner only, finished with its result; a lapsed lease
requeues it then gives up; the pool cannot be deleted while one is queued or running, and its rows go with it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service import pool_embeddings as repo
from service import pools
from service.db import session_scope
from service.errors import ServiceError
from service.models import Pool, PoolEmbedding, PoolImage, utcnow
from service.outbox import POOL_EMBEDDING
from service.storage import LocalStorage
from service.uploads import SubmittedImage
from tests.service.test_jobs_repository import factory  # noqa: F401  (the two-database fixture)

RESULT = {"status": "built", "key": "0123456789abcdef", "images": 2, "views": 4, "encoder": "torch", "seconds": 0.5,
          "encoder_choice": {"backend": "torch"}}  # fmt: skip


def _images(count: int = 2) -> list[SubmittedImage]:
    import io

    from PIL import Image

    images = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (index * 40, 0, 0)).save(buffer, format="PNG")
        images.append(SubmittedImage("", index, f"{index}.png", buffer.getvalue(), "image/png", 8, 8))
    return images


def _pool(factory, tmp_path, teacher: str | None = "shapes-mini", grace: float = 10.0) -> tuple[str, str | None]:  # noqa: F811
    """A pool made as the API makes one: (pool id, its queued embedding's id, None without a teacher)."""
    request = None if teacher is None else pools.EmbeddingRequest(teacher, 4, publish_grace_seconds=grace)
    pool = pools.create(_images(), None, None, factory, LocalStorage(tmp_path / "storage"), embedding=request)
    with session_scope(factory) as session:
        found = repo.list_for_pools(session, [pool.id])[pool.id]
    return pool.id, (found[0].id if found else None)


def _get(factory, embedding_id: str) -> PoolEmbedding:  # noqa: F811
    with session_scope(factory) as session:
        return session.get_one(PoolEmbedding, embedding_id)


def test_created_with_the_pool_queued_and_flagged_then_claimed_once_renewed_and_finished(factory, tmp_path):  # noqa: F811
    pool_id, embedding_id = _pool(factory, tmp_path)
    assert embedding_id is not None and embedding_id.startswith("pemb_")
    queued = _get(factory, embedding_id)
    assert (queued.pool_id, queued.teacher, queued.views, queued.status, queued.attempts) == (pool_id, "shapes-mini", 4, "queued", 0)
    assert queued.publish_due_at is not None and queued.result is None
    with session_scope(factory) as session:
        assert repo.active(session, pool_id) == [embedding_id]
        claimed = repo.claim(session, embedding_id, "w1", 30, 3)
    assert claimed is not None and claimed.status == "running" and claimed.attempts == 1 and claimed.publish_due_at is None
    with session_scope(factory) as session:
        assert repo.claim(session, embedding_id, "w2", 30, 3) is None  # a duplicate message: the lease is live
        assert repo.renew_lease(session, embedding_id, "w1", 30)
        assert not repo.renew_lease(session, embedding_id, "w2", 30)  # not the owner
        assert not repo.finish(session, embedding_id, "w2", repo.SUCCEEDED, result=RESULT)
        assert repo.finish(session, embedding_id, "w1", repo.SUCCEEDED, result=RESULT)
    done = _get(factory, embedding_id)
    assert done.status == "succeeded" and done.result == RESULT and done.lease_owner is None and done.finished_at is not None
    with session_scope(factory) as session:
        assert repo.active(session, pool_id) == []
        assert not repo.renew_lease(session, embedding_id, "w1", 30)  # ended: nothing to renew
        assert repo.claim(session, embedding_id, "w3", 30, 3) is None  # a late duplicate message runs nothing


def test_a_pool_without_a_teacher_has_no_embedding(factory, tmp_path):  # noqa: F811
    pool_id, embedding_id = _pool(factory, tmp_path, teacher=None)
    assert embedding_id is None
    with session_scope(factory) as session:
        assert repo.list_for_pools(session, [pool_id]) == {pool_id: []} and repo.active(session, pool_id) == []


def test_a_lapsed_lease_requeues_then_gives_up(factory, tmp_path):  # noqa: F811
    _, embedding_id = _pool(factory, tmp_path)
    later = utcnow() + timedelta(seconds=60)
    for attempt in (1, 2):
        with session_scope(factory) as session:
            assert repo.claim(session, embedding_id, f"w{attempt}", 30, 2) is not None
        with session_scope(factory) as session:
            assert repo.reap_expired(session, 2, now=utcnow()) == []  # not lapsed yet
            requeued = repo.reap_expired(session, 2, now=later)
        state = _get(factory, embedding_id)
        if attempt == 1:
            assert requeued == [embedding_id] and state.status == "queued" and state.publish_due_at is not None
            assert state.lease_owner is None
            with session_scope(factory) as session:  # the reaper publishes it at once
                assert [key for key, _ in POOL_EMBEDDING.pending(session, utcnow(), [(embedding_id,)])] == [(embedding_id,)]
        else:
            assert requeued == [] and state.status == "failed" and state.error_code == "worker_lost"


def test_a_claim_past_the_attempts_fails_it(factory, tmp_path):  # noqa: F811
    _, embedding_id = _pool(factory, tmp_path)
    with session_scope(factory) as session:
        assert repo.claim(session, embedding_id, "w1", 30, 1) is not None
    with session_scope(factory) as session:  # its worker died; the message came back after the lease lapsed
        session.get_one(PoolEmbedding, embedding_id).lease_expires_at = utcnow() - timedelta(seconds=1)
    with session_scope(factory) as session:
        assert repo.claim(session, embedding_id, "w2", 30, 1) is None
    failed = _get(factory, embedding_id)
    assert failed.status == "failed" and failed.error_code == "worker_lost" and failed.attempts == 1


def test_the_outbox_flag_is_due_after_its_grace_and_cleared_once(factory, tmp_path):  # noqa: F811
    _, embedding_id = _pool(factory, tmp_path, grace=5.0)
    with session_scope(factory) as session:
        assert POOL_EMBEDDING.pending(session, utcnow(), []) == []
        [(key, due_at)] = POOL_EMBEDDING.pending(session, utcnow() + timedelta(seconds=6), [])
    assert key == (embedding_id,)
    with session_scope(factory) as session:
        assert POOL_EMBEDDING.clear(session, key, due_at)
        assert not POOL_EMBEDDING.clear(session, key, due_at)
        assert repo.unpublished(session, due_by=utcnow() + timedelta(seconds=6)) == []


def test_the_pool_is_not_deleted_while_its_embedding_is_queued_or_running_and_its_rows_go_with_it(factory, tmp_path):  # noqa: F811
    pool_id, embedding_id = _pool(factory, tmp_path)
    for claim in (False, True):
        if claim:
            with session_scope(factory) as session:
                assert repo.claim(session, embedding_id, "w", 30, 3) is not None
        with session_scope(factory) as session, pytest.raises(ServiceError) as busy:
            pools.delete_one(session, pool_id, None)
        assert busy.value.code == "pool_in_use" and busy.value.http_status == 409
        assert busy.value.details == {"jobs": [], "embeddings": [embedding_id]} and embedding_id in busy.value.message
    with session_scope(factory) as session:
        assert repo.finish(session, embedding_id, "w", repo.FAILED, code="teacher_unavailable", message="offline")
    with session_scope(factory) as session:
        assert pools.delete_one(session, pool_id, None) == pools.prefix(pool_id)
    with session_scope(factory) as session:
        assert session.get(Pool, pool_id) is None and session.get(PoolEmbedding, embedding_id) is None
        assert session.query(PoolImage).filter_by(pool_id=pool_id).count() == 0


def test_the_reaper_publishes_an_overdue_embedding_once_as_an_embed_pool_message(tmp_path):
    from service.reaper import reap_once
    from tests.servers import settings_for
    from tests.service.test_outbox import Outbox

    box = Outbox(settings_for(tmp_path / "service", publish_grace_seconds=10.0))
    try:
        _, embedding_id = _pool(box.factory, tmp_path)  # committed; its publisher died before the message went out
        with session_scope(box.factory) as session:
            session.get_one(PoolEmbedding, embedding_id).publish_due_at = utcnow() - timedelta(seconds=1)
        assert reap_once(box.settings, box.factory, box.celery).published == [embedding_id]
        assert _get(box.factory, embedding_id).publish_due_at is None
        assert reap_once(box.settings, box.factory, box.celery).published == []  # cleared: not published again
        with box.celery.connection_for_read() as connection, connection.SimpleQueue(box.settings.queue, no_ack=True) as queue:
            message = queue.get(timeout=2.0)
            assert (message.headers["task"], message.payload[0]) == ("clipforge.embed_pool", [embedding_id])
            with pytest.raises(queue.Empty):
                queue.get(timeout=0.5)
    finally:
        box.close()
