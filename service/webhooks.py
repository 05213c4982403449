"""Webhooks: a job's end delivered to the URL its submitter named, signed, retried, and every attempt recorded.

Deliveries follow the outbox pattern the queue uses: ``enqueue`` adds a ``webhook_deliveries`` row in the transaction
that finishes the job, so a delivery is never lost between the job's end and its POST; a dispatcher (a thread of
every API process) sends the due ones, at least once, with exponential backoff and jitter between attempts, and gives
up after ``webhook_max_attempts``. Requests are signed per the Standard Webhooks convention (``webhook-id``,
``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256>`` over ``id.timestamp.body``) with a secret per
tenant (``clipforge keys webhook-secret``). Targets must be http(s); private, loopback and link-local addresses are
refused (server-side request forgery) unless the operator allows them, checked at submission and again at each
attempt (the name may resolve elsewhere by then).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db import session_scope
from service.models import Job, WebhookAttempt, WebhookDelivery, WebhookSecret, utcnow
from service.settings import Settings

log = logging.getLogger("clipforge.webhooks")

EVENTS = ("job.succeeded", "job.failed", "job.cancelled", "evaluation.succeeded")
MAX_URL_CHARS = 2000
OPEN_MODE_OWNER = "open"  # the secret of jobs submitted while the service runs open (no tenant)
SECRET_PREFIX = "whsec_"
BACKOFF_CAP_S = 3600.0
JITTER = 0.2  # each wait is scaled by a random factor in [1 - JITTER, 1 + JITTER]: retries of many deliveries spread out
DISPATCH_BATCH = 20


class WebhookError(ValueError):
    """A webhook setting refused at submission; ``code`` is the API's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------------------------
# Targets
# ------------------------------------------------------------------------------------------


def check_target(url: str, allow_private: bool) -> None:
    """Raises WebhookError unless ``url`` is http(s) to a public address (or any address when ``allow_private``)."""
    if len(url) > MAX_URL_CHARS:
        raise WebhookError("invalid_webhook_url", f"the webhook URL is {len(url)} characters; at most {MAX_URL_CHARS}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError("invalid_webhook_url", "the webhook URL must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise WebhookError("invalid_webhook_url", "the webhook URL must not carry credentials")
    if allow_private:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)}
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise WebhookError("invalid_webhook_url", f"the webhook host {parts.hostname!r} does not resolve: {exc}") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise WebhookError("webhook_target_forbidden", f"the webhook host {parts.hostname!r} resolves to a non-public address ({ip})")


def check_events(events: Sequence[str] | None) -> list[str]:
    if events is None:
        return list(EVENTS)
    unknown = sorted(set(events) - set(EVENTS))
    if unknown or not events:
        raise WebhookError("unknown_webhook_event", f"webhook events must be a non-empty subset of {list(EVENTS)}; got {unknown or []}")
    return sorted(set(events), key=EVENTS.index)


# ------------------------------------------------------------------------------------------
# Secrets and signatures
# ------------------------------------------------------------------------------------------


def _owner(tenant_id: str | None) -> str:
    return tenant_id or OPEN_MODE_OWNER


def signing_secret(session: Session, tenant_id: str | None, *, rotate: bool = False) -> str:
    """The tenant's secret (``whsec_`` + base64 of 24 random bytes), created at its first use; ``rotate`` replaces it."""
    owner = _owner(tenant_id)
    row = session.get(WebhookSecret, owner)
    if row is None or rotate:
        secret = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()
        if row is None:
            session.add(WebhookSecret(owner=owner, secret=secret, created_at=utcnow()))
        else:
            row.secret, row.created_at = secret, utcnow()
        session.flush()
        return secret
    return row.secret


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value (Standard Webhooks, v1: HMAC-SHA256)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# ------------------------------------------------------------------------------------------
# The outbox
# ------------------------------------------------------------------------------------------


def enqueue(session: Session, job: Job, event: str, data: dict[str, Any]) -> None:
    """A delivery of ``event`` for ``job`` when its submitter asked for it; in the caller's transaction."""
    if not job.webhook_url or event not in (job.webhook_events or EVENTS):
        return
    now = utcnow()
    delivery_id = "whd_" + secrets.token_hex(12)
    payload = {"type": event, "timestamp": now.isoformat(), "data": data}
    session.add(
        WebhookDelivery(
            id=delivery_id,
            job_id=job.id,
            event=event,
            url=job.webhook_url,
            payload=payload,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )


def backoff_seconds(attempts: int, base: float, rng: random.Random) -> float:
    """Wait after the ``attempts``-th failure: base, 2 base, 4 base ... capped at an hour, with jitter."""
    return min(BACKOFF_CAP_S, base * 2 ** (attempts - 1)) * rng.uniform(1 - JITTER, 1 + JITTER)


def _claim_due(session: Session, now: datetime, hold: timedelta) -> list[WebhookDelivery]:
    """Due pending deliveries, each held for ``hold`` (its next attempt moved on) so that another dispatcher skips it."""
    due = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(DISPATCH_BATCH)
    ).all()
    claimed = []
    for delivery in due:
        moved = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery.id, WebhookDelivery.next_attempt_at == delivery.next_attempt_at)
            .values(next_attempt_at=now + hold)
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount == 1:  # type: ignore[attr-defined]
            claimed.append(delivery)
    return claimed


def _attempt(delivery: WebhookDelivery, secret: str, settings: Settings, http: httpx.Client) -> tuple[int | None, str | None, float]:
    """POST once: (status code or None, error or None, seconds)."""
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "clipforge-webhooks",
        "webhook-id": delivery.id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, delivery.id, timestamp, body),
    }
    began = time.monotonic()
    try:
        check_target(delivery.url, settings.webhook_allow_private_targets)
        response = http.post(delivery.url, content=body, headers=headers, timeout=settings.webhook_timeout_seconds)
    except WebhookError as exc:
        return None, f"{exc.code}: {exc}", time.monotonic() - began
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:500], time.monotonic() - began
    error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
    return response.status_code, error, time.monotonic() - began


def deliver_due(settings: Settings, factory: sessionmaker[Session], http: httpx.Client, rng: random.Random | None = None) -> int:
    """One dispatcher round: every due delivery attempted once; the number attempted."""
    rng = rng or random.Random()
    hold = timedelta(seconds=settings.webhook_timeout_seconds * 2 + 5)
    with session_scope(factory) as session:
        due = [(d.id, d.job_id) for d in _claim_due(session, utcnow(), hold)]
    for delivery_id, job_id in due:
        with session_scope(factory) as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            tenant_id = session.scalar(select(Job.tenant_id).where(Job.id == job_id))
            secret = signing_secret(session, tenant_id)
            session.expunge(delivery)
        status, error, seconds = _attempt(delivery, secret, settings, http)
        with session_scope(factory) as session:
            row = session.get(WebhookDelivery, delivery_id)
            if row is None:  # its job was deleted meanwhile
                continue
            row.attempts += 1
            now = utcnow()
            session.add(
                WebhookAttempt(
                    delivery_id=delivery_id, attempt=row.attempts, at=now, status_code=status, error=error, seconds=round(seconds, 3)
                )
            )
            row.last_status_code, row.last_error = status, error
            if error is None:
                row.status, row.finished_at = "delivered", now
            elif row.attempts >= settings.webhook_max_attempts:
                row.status, row.finished_at = "failed", now
                log.warning("webhook %s for job %s: gave up after %d attempts (%s)", delivery_id, job_id, row.attempts, error)
            else:
                row.next_attempt_at = now + timedelta(seconds=backoff_seconds(row.attempts, settings.webhook_retry_base_seconds, rng))
    return len(due)


def start_dispatcher(settings: Settings, factory: sessionmaker[Session]) -> threading.Event:
    """A daemon thread delivering due webhooks every ``webhook_interval_seconds``; set the returned event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(follow_redirects=False) as http:
            while True:
                try:
                    deliver_due(settings, factory, http)
                except Exception:  # the database is briefly away: next round
                    log.exception("webhook round failed")
                if stop.wait(settings.webhook_interval_seconds):
                    return

    threading.Thread(target=loop, name="webhooks", daemon=True).start()
    return stop
