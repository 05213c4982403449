"""One lease-and-outbox mechanism for every kind of row that workers run: jobs, their synthesis chunks, evaluations, and
whatever kind comes next (a ``LeasedTable`` over its model).

Such a row has a ``status``, an ``attempts`` count, a lease (``lease_owner``, ``lease_expires_at``) that its worker
renews, an outbox flag (``publish_due_at``) and ``updated_at``. Every change is a compare-and-set (an UPDATE whose WHERE
holds the row's key and what the caller read), so that of two workers, two messages or a worker and the reaper, exactly
one makes each change:

- ``claim``: a queued row, or a running one whose lease lapsed, becomes running for an owner (one attempt more);
- ``renew``: the owner extends its lease while the row is still its own;
- ``expired``: running rows whose lease lapsed (their worker died), for the reaper;
- ``requeue``: such a row goes back to queued, flagged for publication;
- ``unpublished`` / ``mark_published``: the outbox. The commit that queues a row sets ``publish_due_at``; the publisher
  clears it after the broker took the message, only if it is still the flag it read (a row requeued meanwhile carries
  a new flag for a new message). The reaper publishes the flags left past their time.

What a kind does beyond that (a job's stage and progress, a chunk's job, an evaluation's result) stays with its module
(service.jobs, service.chunks, service.evaluations); their transitions are expressed with these operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from service.models import utcnow

Key = tuple[Any, ...]  # a row's primary key values, in the order of ``LeasedTable.key``


@dataclass(frozen=True)
class LeasedTable:
    """The lease-and-outbox operations on one table."""

    model: Any  # the ORM class: status, attempts, lease_owner, lease_expires_at, publish_due_at, updated_at columns
    key: tuple[str, ...]  # the attribute names of its primary key
    queued: str = "queued"  # the status of a row waiting for a worker
    running: str = "running"  # the status of a row a worker holds

    def _matches(self, key: Key) -> list[Any]:
        return [getattr(self.model, name) == value for name, value in zip(self.key, key, strict=True)]

    def cas(self, session: Session, key: Key, conditions: Sequence[Any], **values: Any) -> bool:
        """Compare-and-set on one row; True when this caller made the change."""
        values.setdefault("updated_at", utcnow())
        statement = update(self.model).where(*self._matches(key), *conditions).values(**values)
        return session.execute(statement.execution_options(synchronize_session=False)).rowcount == 1  # type: ignore[attr-defined]

    def held_by(self, owner: str, statuses: Sequence[str] | None = None) -> list[Any]:
        """Conditions: ``owner`` holds the row's lease and it is in one of ``statuses`` (default: running)."""
        return [self.model.lease_owner == owner, self.model.status.in_(tuple(statuses or (self.running,)))]

    def owned_by(self, owner: str | None) -> Any:
        """Condition: the lease is ``owner``'s; None: nobody's."""
        return self.model.lease_owner == owner if owner is not None else self.model.lease_owner.is_(None)

    @staticmethod
    def lapsed(row: Any, now: datetime) -> bool:
        """Whether the row holds no live lease."""
        return row.lease_expires_at is None or row.lease_expires_at < now

    def claim(self, session: Session, key: Key, conditions: Sequence[Any], owner: str, lease_seconds: float, now: datetime,
              **values: Any) -> bool:  # fmt: skip
        """Make the row running for ``owner`` under a fresh lease, one attempt more, its message consumed (the flag
        cleared), if ``conditions`` (what the caller read) still hold. ``values``: the kind's own columns."""
        return self.cas(
            session,
            key,
            conditions,
            status=self.running,
            attempts=self.model.attempts + 1,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            publish_due_at=None,
            started_at=now,
            **values,
        )

    def renew(self, session: Session, key: Key, owner: str, lease_seconds: float, statuses: Sequence[str] | None = None,
              **values: Any) -> bool:  # fmt: skip
        """Extend ``owner``'s lease; False when the row is no longer its own."""
        expires = utcnow() + timedelta(seconds=lease_seconds)
        return self.cas(session, key, self.held_by(owner, statuses), lease_expires_at=expires, **values)

    def expired(self, session: Session, now: datetime, statuses: Sequence[str] | None = None) -> list[Any]:
        """Rows in ``statuses`` (default: running) whose lease lapsed before ``now``, in key order."""
        model = self.model
        query = select(model).where(
            model.status.in_(tuple(statuses or (self.running,))), model.lease_expires_at.is_not(None), model.lease_expires_at < now
        )
        return list(session.scalars(query.order_by(*(getattr(model, name) for name in self.key))))

    def same_expired(self, row: Any, now: datetime) -> list[Any]:
        """Conditions: the row is still as ``expired`` read it (same status and owner, lease still lapsed)."""
        model = self.model
        return [model.status == row.status, model.lease_owner == row.lease_owner, model.lease_expires_at < now]

    def requeue(self, session: Session, key: Key, conditions: Sequence[Any], now: datetime, publish_grace_seconds: float,
                **values: Any) -> bool:  # fmt: skip
        """Put the row back in the queue, its lease dropped and flagged for a new message."""
        due = now + timedelta(seconds=publish_grace_seconds)
        return self.cas(session, key, conditions, status=self.queued, lease_owner=None, lease_expires_at=None, publish_due_at=due, **values)

    def key_of(self, row: Any) -> Key:
        return tuple(getattr(row, name) for name in self.key)

    def unpublished(
        self,
        session: Session,
        *,
        due_by: datetime,
        including: Sequence[Key] = (),
        where: Sequence[Any] | None = None,
        limit: int = 100,
    ) -> list[tuple[Key, datetime]]:
        """(key, ``publish_due_at``) of the flagged rows to publish: due by ``due_by``, or among ``including`` (just requeued
        by the caller, who publishes them at once). ``where``: which rows carry messages (default: the queued ones).
        Oldest first; a backlog drains over rounds."""
        model = self.model
        due = or_(model.publish_due_at <= due_by, *(and_(*self._matches(key)) for key in including))
        conditions = [model.status == self.queued] if where is None else list(where)
        key_columns = [getattr(model, name) for name in self.key]
        query = (
            select(*key_columns, model.publish_due_at)
            .where(*conditions, model.publish_due_at.is_not(None), due)
            .order_by(model.publish_due_at, *key_columns)
            .limit(limit)
        )
        return [(tuple(row[:-1]), row[-1]) for row in session.execute(query).all()]

    def mark_published(self, session: Session, key: Key, publish_due_at: datetime) -> bool:
        """Clear the flag after a successful publish, only if it is still the one read before publishing: a row requeued
        meanwhile carries a new flag for a new message, which must stay. ``updated_at`` is left alone (nothing visible changed)."""
        statement = update(self.model).where(*self._matches(key), self.model.publish_due_at == publish_due_at).values(publish_due_at=None)
        return session.execute(statement.execution_options(synchronize_session=False)).rowcount == 1  # type: ignore[attr-defined]
