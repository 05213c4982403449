"""Running one pool embedding (service.pool_embeddings): the teacher's embeddings of a pool's images and views, built and
stored where every job on the pool and teacher looks for them (core.pipeline.embed_pool_ahead, as `clipforge pools
embed --service` does), before any job uses the pool.

As with jobs and evaluations, the message carries the row's id only, the worker claims it with a lease that a keeper
thread renews while it works (each step of the build checks the lease is still its own), and the row ends succeeded
with what a job's ``metrics.pool_embeddings`` would say, or failed with the error's code (a teacher this worker cannot
load: ``unknown_teacher``, ``teacher_unavailable``; never stuck). The stored object is checked whole on load, so an
attempt cut short leaves nothing a job could use, and one that finds it made already reuses it.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.pipeline import embed_pool_ahead
from core.pools import MIN_POOL_IMAGES
from core.stored import storage_object_store
from core.teachers import default_cache_dir
from service import pool_embeddings as repo
from service.db import session_scope
from service.settings import Settings
from service.storage import Storage
from worker.attempts import LeaseKeeper, LeaseLost, new_owner, settle
from worker.runner import json_safe, read_pool_source, resolve_for_worker

log = logging.getLogger("clipforge.worker")

# The classes of the spec the pool is resolved with: a pool's embeddings do not depend on a job's classes (core.pools),
# and embed_pool_ahead checks an onnxruntime tower on the teacher's own vocabulary.
PLACEHOLDER_CLASSES = ["a", "b"]


class TooFewPoolImagesError(ValueError):
    code = "too_few_images"


class PoolEmbeddingRunner:
    def __init__(self, settings: Settings, factory: sessionmaker[Session], storage: Storage) -> None:
        self.settings, self.factory, self.storage = settings, factory, storage

    def run(self, embedding_id: str) -> str:
        owner = new_owner()
        with session_scope(self.factory) as session:
            embedding = repo.claim(session, embedding_id, owner, self.settings.lease_seconds, self.settings.max_attempts)
            if embedding is None:
                log.info("pool embedding %s is not ours to run (finished, deleted or leased elsewhere)", embedding_id)
                return "skipped"
            pool_id, teacher_name, views = embedding.pool_id, embedding.teacher, embedding.views
        seconds = self.settings.lease_seconds
        keeper = LeaseKeeper(
            self.factory, embedding_id, self.settings.beat_seconds, lambda session: repo.renew_lease(session, embedding_id, owner, seconds)
        )

        def attempt() -> str:
            result = self._embed(pool_id, teacher_name, views, keeper)
            keeper.check()
            with session_scope(self.factory) as session:
                if not repo.finish(session, embedding_id, owner, repo.SUCCEEDED, result=result):
                    raise LeaseLost(embedding_id)
            log.info("pool embedding %s (pool %s, %s) succeeded: %s in %.1f s", embedding_id, pool_id, teacher_name, result["status"],
                     result["seconds"])  # fmt: skip
            return repo.SUCCEEDED

        def failed(code: str, message: str) -> str:
            with session_scope(self.factory) as session:
                repo.finish(session, embedding_id, owner, repo.FAILED, code=code, message=message)
            return repo.FAILED

        keeper.start()
        try:
            return settle(f"pool embedding {embedding_id}", attempt, lost=lambda: "lost", failed=failed)
        finally:
            keeper.stop()

    def _embed(self, pool_id: str, teacher_name: str, views: int, keeper: LeaseKeeper) -> dict[str, Any]:
        """The pool's embeddings by the teacher, loaded as a job's (worker.teachers, on the worker's device), stored in the
        service's storage under the key its jobs compute; what a job's metrics.pool_embeddings would say of them."""
        spec_data = {"teacher": teacher_name, "classes": PLACEHOLDER_CLASSES, "synthesis": {"pool": pool_id, "pool_views": views}}
        spec, teacher = resolve_for_worker(spec_data, self.settings)
        source = read_pool_source(self.factory, self.storage, spec, teacher)
        assert source is not None  # the spec names the pool
        if len(source) < MIN_POOL_IMAGES:
            raise TooFewPoolImagesError(f"pool {pool_id!r} has {len(source)} image(s); a job needs at least {MIN_POOL_IMAGES}")

        def on_step(done: int, total: int) -> None:
            keeper.check()  # the keeper renews the lease; a lost one stops the build here

        towers = self.settings.cache_dir or default_cache_dir()  # a large teacher's onnxruntime towers, beside its weights
        built = embed_pool_ahead(spec, teacher, source, storage_object_store(self.storage), towers, on_step=on_step)
        return json_safe(built.summary)  # type: ignore[return-value]  # a dict stays one
