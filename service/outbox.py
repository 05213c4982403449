"""The outbox's publishing side: one step that sends a flagged row's message and clears its flag, for every kind of
message (a job's, an evaluation's, a split job's chunks' and its distillation's, a pool embedding's). The rows' side (the flags, the
compare-and-set that clears one) is service.leases; the API, the worker and the reaper all publish through here."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from service import chunks, evaluations, pool_embeddings
from service import jobs as repo
from service.db import session_scope
from service.leases import Key
from service.queue import (
    BrokerUnavailable,
    enqueue_chunks,
    enqueue_distillation,
    enqueue_evaluation,
    enqueue_job,
    enqueue_pool_embedding,
)
from service.settings import Settings

log = logging.getLogger("clipforge.outbox")


@dataclass(frozen=True)
class Outbox:
    """One kind of message that rows flag for publication."""

    name: str  # how logs and events name one: "job", "evaluation", "chunk", "distillation", "pool embedding"
    send: Callable[[Celery, Settings, Key], None]  # publish the message of the row with this key; BrokerUnavailable
    pending: Callable[[Session, datetime, Sequence[Key]], list[tuple[Key, datetime]]]  # flags due by then, or among these keys
    clear: Callable[[Session, Key, datetime], bool]  # clear the flag if it is still the one read (the leases' mark_published)

    def label(self, key: Key) -> str:
        return f"{self.name} {'/'.join(str(part) for part in key)}"

    def publish(self, celery: Celery, settings: Settings, factory: sessionmaker[Session], key: Key, publish_due_at: datetime) -> bool:
        """Send the message, then clear its flag (only if still the one read). BrokerUnavailable when the broker cannot
        take it (the flag stays, for a later round). Clearing is best effort: a flag left set (the database briefly away)
        makes a later round send a second message, which the claim drops. True when the flag was cleared."""
        self.send(celery, settings, key)
        try:
            with session_scope(factory) as session:
                return self.clear(session, key, publish_due_at)
        except Exception:
            log.exception("%s: published, but its outbox flag could not be cleared", self.label(key))
            return False

    def try_publish(
        self, celery: Celery | None, settings: Settings, factory: sessionmaker[Session], key: Key, publish_due_at: datetime
    ) -> bool:
        """Publish where the caller goes on whatever happens (a worker's follow-up message): a broker that refuses it, or
        no broker at all, leaves the flag set, and the reaper publishes it. True when it was published."""
        if celery is None:
            log.warning("%s: no broker here; the reaper publishes it", self.label(key))
            return False
        try:
            self.publish(celery, settings, factory, key, publish_due_at)
        except BrokerUnavailable:
            log.exception("%s: the broker refused it; the reaper publishes it", self.label(key))
            return False
        return True


def _ids(keys: Sequence[Key]) -> list[str]:
    return [key[0] for key in keys]


JOB = Outbox(
    "job",
    lambda celery, settings, key: enqueue_job(celery, settings, key[0]),
    lambda session, due_by, including: [((j,), due) for j, due in repo.unpublished_jobs(session, due_by=due_by, including=_ids(including))],
    lambda session, key, due: repo.mark_published(session, key[0], due),
)
EVALUATION = Outbox(
    "evaluation",
    lambda celery, settings, key: enqueue_evaluation(celery, settings, key[0]),
    lambda session, due_by, including: [
        ((e,), due) for e, due in evaluations.unpublished(session, due_by=due_by, including=_ids(including))
    ],
    lambda session, key, due: evaluations.mark_published(session, key[0], due),
)
CHUNK = Outbox(
    "chunk",
    lambda celery, settings, key: enqueue_chunks(celery, settings, key[0], [key[1]]),
    lambda session, due_by, including: [((j, i), due) for j, i, due in chunks.unpublished(session, due_by=due_by, including=including)],
    lambda session, key, due: chunks.mark_published(session, key[0], key[1], due),
)
DISTILLATION = Outbox(  # a split job's distillation: its flag is the job's own publish_due_at
    "distillation",
    lambda celery, settings, key: enqueue_distillation(celery, settings, key[0]),
    lambda session, due_by, including: [
        ((j,), due) for j, due in chunks.unpublished_distillations(session, due_by=due_by, including=_ids(including))
    ],
    lambda session, key, due: repo.mark_published(session, key[0], due),
)

POOL_EMBEDDING = Outbox(
    "pool embedding",
    lambda celery, settings, key: enqueue_pool_embedding(celery, settings, key[0]),
    lambda session, due_by, including: [
        ((e,), due) for e, due in pool_embeddings.unpublished(session, due_by=due_by, including=_ids(including))
    ],
    lambda session, key, due: pool_embeddings.mark_published(session, key[0], due),
)


def publish_job(celery: Celery, settings: Settings, factory: sessionmaker[Session], job_id: str, publish_due_at: datetime) -> bool:
    return JOB.publish(celery, settings, factory, (job_id,), publish_due_at)


def publish_evaluation(
    celery: Celery, settings: Settings, factory: sessionmaker[Session], evaluation_id: str, publish_due_at: datetime
) -> bool:
    return EVALUATION.publish(celery, settings, factory, (evaluation_id,), publish_due_at)
