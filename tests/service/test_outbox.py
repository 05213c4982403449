"""The transactional outbox: a job committed as queued whose message never reached the broker (its publisher died after
the commit, or the broker was down) is published by the reaper once its grace period is over, and only then.

Real components: a SQLite database migrated by Alembic, the embedded broker (kombu's SQLAlchemy transport) or a real
redis-server, and the messages read back from the broker itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from service import jobs as repo
from service.db import make_engine, make_session_factory, migrate, session_scope
from service.ids import new_id
from service.models import Job, utcnow
from service.queue import BrokerUnavailable, create_celery, enqueue_job
from service.reaper import reap_once
from service.settings import Settings
from tests.servers import RestartableRedis, settings_for

SPEC = {"teacher": "shapes-mini", "classes": [{"name": "a"}, {"name": "b"}], "seed": 7}
GRACE_SECONDS = 10.0


class Outbox:
    """A database, a broker and the settings the reaper runs with."""

    def __init__(self, settings: Settings) -> None:
        settings.ensure_local_dirs()
        migrate(settings.database_url)
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        self.factory: sessionmaker[Session] = make_session_factory(self.engine)
        self.celery: Celery = create_celery(settings)

    def committed_but_not_published(self) -> str:
        """What the API leaves behind when it dies between the commit of the row and the publish of its message."""
        job_id = new_id("job")
        with session_scope(self.factory) as session:
            repo.create_job(session, job_id=job_id, spec=SPEC, publish_grace_seconds=self.settings.publish_grace_seconds)
        return job_id

    def make_overdue(self, job_id: str) -> None:
        with session_scope(self.factory) as session:
            session.execute(update(Job).where(Job.id == job_id).values(publish_due_at=utcnow() - timedelta(seconds=1)))

    def due_at(self, job_id: str) -> datetime | None:
        with session_scope(self.factory) as session:
            return repo.get_job(session, job_id).publish_due_at

    def messages(self, wait: float = 2.0) -> list[str]:
        """Consume every message in the job queue: the job id each one carries."""
        job_ids: list[str] = []
        with self.celery.connection_for_read() as connection, connection.SimpleQueue(self.settings.queue, no_ack=True) as queue:
            while True:
                try:
                    message = queue.get(timeout=wait if not job_ids else 0.5)
                except queue.Empty:
                    return job_ids
                assert message.headers["task"] == "clipforge.run_job"
                job_ids.append(message.payload[0][0])

    def close(self) -> None:
        self.celery.close()
        self.engine.dispose()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(settings_for(tmp_path, publish_grace_seconds=GRACE_SECONDS))
    yield box
    box.close()


def test_an_overdue_queued_job_with_no_message_is_published_then_runs_once(outbox):
    job_id = outbox.committed_but_not_published()
    outbox.make_overdue(job_id)
    assert outbox.messages(wait=0.5) == []  # the broker never heard of it: without the outbox it would wait forever
    result = reap_once(outbox.settings, outbox.factory, outbox.celery)
    assert result.published == [job_id] and result.requeued == []
    assert outbox.due_at(job_id) is None
    assert reap_once(outbox.settings, outbox.factory, outbox.celery).published == []  # cleared: not published again
    assert outbox.messages() == [job_id]  # exactly one message, in the broker
    with session_scope(outbox.factory) as session:
        assert repo.claim(session, job_id, "w1", lease_seconds=30, max_attempts=3) is not None  # the message's job runs


def test_a_job_inside_its_grace_period_is_left_to_its_own_publisher(outbox):
    job_id = outbox.committed_but_not_published()
    due_at = outbox.due_at(job_id)
    assert due_at is not None and due_at > utcnow() + timedelta(seconds=GRACE_SECONDS - 5)
    assert reap_once(outbox.settings, outbox.factory, outbox.celery).published == []
    assert outbox.due_at(job_id) == due_at and outbox.messages(wait=0.5) == []
    # Its publisher (the API) publishes and clears the flag, compare-and-set: a stale flag value clears nothing.
    enqueue_job(outbox.celery, outbox.settings, job_id)
    with session_scope(outbox.factory) as session:
        assert not repo.mark_published(session, job_id, due_at - timedelta(microseconds=1))
        assert repo.mark_published(session, job_id, due_at)
    assert outbox.due_at(job_id) is None
    assert reap_once(outbox.settings, outbox.factory, outbox.celery).published == []
    assert outbox.messages() == [job_id]


def test_a_requeued_job_is_published_at_once_and_a_finished_one_never(outbox):
    requeued, cancelled = outbox.committed_but_not_published(), outbox.committed_but_not_published()
    with session_scope(outbox.factory) as session:
        repo.claim(session, requeued, "worker-that-dies", lease_seconds=0.01, max_attempts=3)
        repo.request_cancel(session, cancelled)
    assert outbox.due_at(requeued) is None and outbox.due_at(cancelled) is None  # left the queue: nothing to publish
    time.sleep(0.05)
    result = reap_once(outbox.settings, outbox.factory, outbox.celery)
    assert result.requeued == [requeued] and result.published == [requeued]  # no grace: this reaper is its publisher
    assert outbox.due_at(requeued) is None
    assert outbox.messages() == [requeued]


def test_while_the_broker_is_down_the_flag_stays_and_the_next_round_after_it_is_back_publishes(tmp_path):
    redis = RestartableRedis(tmp_path / "redis")  # its port stays closed until start()
    outbox = Outbox(settings_for(tmp_path / "service", broker_url=redis.url, publish_grace_seconds=GRACE_SECONDS))
    try:
        job_id = outbox.committed_but_not_published()
        outbox.make_overdue(job_id)
        due_at = outbox.due_at(job_id)
        began = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            reap_once(outbox.settings, outbox.factory, outbox.celery)
        assert time.monotonic() - began < 10  # the repo's short broker timeouts: a round fails fast
        assert outbox.due_at(job_id) == due_at  # nothing cleared
        redis.start()
        assert reap_once(outbox.settings, outbox.factory, outbox.celery).published == [job_id]
        assert outbox.due_at(job_id) is None
        assert outbox.messages() == [job_id]
    finally:
        redis.stop()
        outbox.close()
