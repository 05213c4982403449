"""What every worker run of a leased row shares (a job, a chunk of a split job's synthesis, an evaluation): its lease
owner's name, the thread that renews the lease, and the one failure path that ends a run."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from core.pipeline import CustomizeCancelled
from service.db import session_scope
from service.jobs import CANCELLING, RUNNING

log = logging.getLogger("clipforge.worker")
T = TypeVar("T")


class LeaseLost(Exception):
    """The row was deleted or taken over by another worker: stop without touching it."""


def new_owner() -> str:
    """A lease owner: this process (host and pid, so a chunk's row says which worker made it) and a token per run."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseKeeper(threading.Thread):
    """Renews a lease with ``renew`` every ``interval_seconds`` (``Settings.beat_seconds``: at most a third of the lease,
    so that a renewal may fail twice before it lapses); a falsy answer means the lease is no longer ours, noted here."""

    def __init__(self, factory: sessionmaker[Session], name: str, interval_seconds: float, renew: Callable[[Session], object]) -> None:
        super().__init__(name=f"lease-{name}", daemon=True)
        self.factory, self.lease_name, self.interval_seconds, self.renew = factory, name, interval_seconds, renew
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.stopped.wait(self.interval_seconds):
            try:
                with session_scope(self.factory) as session:
                    if not self.renew(session):
                        self.lost = True
                        return
            except Exception:  # a database hiccup: try again at the next beat, the lease has slack
                log.exception("lease renewal of %s failed", self.lease_name)

    def stop(self) -> None:
        self.stopped.set()

    def check(self) -> None:
        """LeaseLost once a renewal found the lease gone."""
        if self.lost:
            raise LeaseLost(self.lease_name)


def settle(
    what: str,
    run: Callable[[], T],
    *,
    lost: Callable[[], T],
    failed: Callable[[str, str], T],
    cancelled: Callable[[], T] | None = None,
) -> T:
    """Run an attempt and end it, the same way for every kind: a lost lease leaves the row to whoever holds it now
    (``lost``), a cancellation is the kind's to record (``cancelled``), and any other error fails the row with the
    exception's machine-readable ``code`` (``internal_error`` without one) and a message naming it (``failed``)."""
    try:
        return run()
    except LeaseLost:
        log.warning("%s: lease lost; stopping without touching it", what)
        return lost()
    except CustomizeCancelled:
        if cancelled is None:
            raise
        return cancelled()
    except Exception as exc:
        code = str(getattr(exc, "code", None) or "internal_error")
        log.exception("%s failed [%s]", what, code)
        return failed(code, f"{type(exc).__name__}: {exc}")


class CancelCheck:
    """``should_cancel`` for the engine's callbacks: reads the job's status with ``read_status`` at most every
    ``interval_seconds`` (None, or a status other than running or cancelling: the row is no longer ours, LeaseLost),
    and answers whether the job is being cancelled. A lost lease stops the run at the next call."""

    def __init__(self, keeper: LeaseKeeper, interval_seconds: float, read_status: Callable[[], str | None]) -> None:
        self.keeper, self.interval_seconds, self.read_status = keeper, interval_seconds, read_status
        self.last_check = 0.0
        self.requested = False

    def __call__(self) -> bool:
        self.keeper.check()
        now = time.monotonic()
        if self.requested or now - self.last_check < self.interval_seconds:
            return self.requested
        self.last_check = now
        status = self.read_status()
        if status not in (RUNNING, CANCELLING):  # requeued, taken over, ended or deleted (a chunk's running is the same)
            raise LeaseLost(self.keeper.lease_name)
        self.requested = status == CANCELLING
        return self.requested
