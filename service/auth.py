"""Tenants and API keys (torch-free): create, list, revoke, verify; and whether the service may run without keys.

A key reads ``cfk.<key id>.<secret>``: the key id (``key_...``) is the visible prefix used to find the row, the secret
is 256 random bits. Only the sha256 of the whole key is stored; a slow hash would add nothing for keys of that
entropy. The comparison is constant-time (``hmac.compare_digest``).

The service runs *open* (no authentication, every request is the anonymous tenant) only while no active key exists
and it is bound to a loopback address; otherwise every ``/v1`` request needs ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session, sessionmaker

from service.db import session_scope
from service.errors import ServiceError
from service.ids import new_id
from service.models import ApiKey, Tenant, utcnow
from service.settings import Settings

KEY_SCHEME = "cfk"
MAX_TENANT_NAME = 100
# Compared against when the key id is unknown, so that a miss costs about as much as a wrong secret.
_UNKNOWN_KEY_HASH = hashlib.sha256(b"no such key").hexdigest()


class AuthSetupError(RuntimeError):
    """The service would be reachable from other machines without any API key."""

    code = "api_keys_required"


@dataclass(frozen=True)
class Principal:
    """Who a request acts for; ``tenant_id`` None is the anonymous tenant of an open (keyless, loopback-only) service."""

    tenant_id: str | None


OPEN_PRINCIPAL = Principal(None)


@dataclass(frozen=True)
class KeyInfo:
    id: str
    tenant: str
    created_at: datetime
    revoked_at: datetime | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key(key: str) -> str | None:
    """The key id of a well-formed key, else None."""
    parts = key.split(".")
    if len(parts) != 3 or parts[0] != KEY_SCHEME or not parts[1].startswith("key_") or not parts[2]:
        return None
    return parts[1]


def create_key(session: Session, tenant_name: str) -> tuple[str, str]:
    """A new key for ``tenant_name`` (the tenant is created when it does not exist yet): (key id, the key, shown once)."""
    name = tenant_name.strip()
    if not name or len(name) > MAX_TENANT_NAME or not name.isprintable():
        raise ServiceError("invalid_tenant_name", f"a tenant name is 1 to {MAX_TENANT_NAME} printable characters", 422)
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=name, created_at=utcnow())
        session.add(tenant)
        session.flush()
    key_id = new_id("key")
    key = f"{KEY_SCHEME}.{key_id}.{secrets.token_urlsafe(32)}"
    session.add(ApiKey(id=key_id, tenant_id=tenant.id, secret_hash=hash_key(key), created_at=utcnow()))
    session.flush()
    return key_id, key


def list_keys(session: Session) -> list[KeyInfo]:
    rows = session.execute(select(ApiKey, Tenant.name).join(Tenant, ApiKey.tenant_id == Tenant.id).order_by(ApiKey.id)).all()
    return [KeyInfo(key.id, name, key.created_at, key.revoked_at) for key, name in rows]


def revoke_key(session: Session, key_id: str) -> KeyInfo:
    """Idempotent; the key stops working at once (every request looks it up)."""
    row = session.execute(select(ApiKey, Tenant.name).join(Tenant, ApiKey.tenant_id == Tenant.id).where(ApiKey.id == key_id)).first()
    if row is None:
        raise ServiceError("key_not_found", f"no API key {key_id!r}", 404)
    key, tenant = row
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return KeyInfo(key.id, tenant, key.created_at, key.revoked_at)


# Both lookups run on every request (a revoked key stops working at once): plain column reads, which a bare Connection
# can run without an ORM session's bookkeeping.


def any_active_key(db: Connection | Session) -> bool:
    return db.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None


def verify_key(db: Connection | Session, key: str) -> Principal | None:
    """The principal of an active key, else None (unknown, malformed, wrong secret and revoked look the same)."""
    key_id = parse_key(key)
    query = select(ApiKey.secret_hash, ApiKey.tenant_id, ApiKey.revoked_at).where(ApiKey.id == key_id)
    row = None if key_id is None else db.execute(query).first()
    stored = row.secret_hash if row is not None else _UNKNOWN_KEY_HASH
    matches = hmac.compare_digest(stored, hash_key(key))
    if row is None or not matches or row.revoked_at is not None:
        return None
    return Principal(row.tenant_id)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def check_exposure(settings: Settings, factory: sessionmaker[Session]) -> str | None:
    """Refuse (AuthSetupError) to serve a non-loopback address without any active key; the open-mode warning
    when running without keys on loopback; None when keys protect the API."""
    with session_scope(factory) as session:
        protected = any_active_key(session)
    if protected:
        return None
    if not is_loopback(settings.host):
        raise AuthSetupError(
            f"refusing to listen on {settings.host}: no API key exists, so the API would be open to the network. "
            "Create one with `clipforge keys create --tenant NAME`, or bind 127.0.0.1."
        )
    return (
        f"no API keys: the API runs OPEN (no authentication) on {settings.host}:{settings.port}, for local use only; "
        "`clipforge keys create --tenant NAME` turns authentication on"
    )
