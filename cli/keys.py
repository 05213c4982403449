"""`clipforge keys create|list|revoke|webhook-secret`: API keys and webhook secrets for operators, written straight to the
service's database.

A key is printed once, when it is created; the database keeps only its sha256.
"""

from __future__ import annotations

import argparse
import json
import sys

from cli.serve import _common


def add_commands(groups: argparse._SubParsersAction) -> None:
    parser = groups.add_parser("keys", help="API keys and tenants (operators; uses the service's database)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, handler) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        sub = commands.add_parser(name, help=help_text)
        _common(sub)  # --config and --data-dir, as the service's own commands take them
        sub.set_defaults(handler=handler)
        return sub

    create = command("create", "create a key for a tenant (created when new); prints the key once", run_create)
    create.add_argument("--tenant", required=True, help="the tenant's name")
    create.add_argument("--json", action="store_true")
    listing = command("list", "list keys: id, tenant, created, revoked", run_list)
    listing.add_argument("--json", action="store_true")
    revoke = command("revoke", "revoke a key; it stops working at once", run_revoke)
    revoke.add_argument("key_id")
    secret = command("webhook-secret", "print the secret that signs a tenant's webhooks (created at first use)", run_webhook_secret)
    secret.add_argument("--tenant", default=None, help="the tenant's name; none: the secret of open-mode jobs")
    secret.add_argument("--rotate", action="store_true", help="replace it: deliveries from now on are signed with the new one")


def _session_factory(args: argparse.Namespace):  # -> sessionmaker[Session]
    from cli.serve import _settings
    from service.db import make_engine, make_session_factory, migrate

    settings = _settings(args)
    settings.ensure_local_dirs()
    migrate(settings.database_url)  # idempotent; the keys tables exist from revision 0002 on
    return make_session_factory(make_engine(settings.database_url))


def run_create(args: argparse.Namespace) -> int:
    from service.auth import create_key
    from service.db import session_scope

    with session_scope(_session_factory(args)) as session:
        key_id, key = create_key(session, args.tenant)
    if args.json:
        print(json.dumps({"id": key_id, "tenant": args.tenant.strip(), "key": key}))
    else:
        print(key, flush=True)  # alone on stdout: KEY=$(clipforge keys create --tenant acme)
        print(f"key id {key_id} for tenant {args.tenant.strip()!r}; the key is shown only this once: store it now", file=sys.stderr)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from service.auth import list_keys
    from service.db import session_scope

    with session_scope(_session_factory(args)) as session:
        keys = list_keys(session)
    if args.json:
        rows = [
            {
                "id": k.id,
                "tenant": k.tenant,
                "created_at": k.created_at.isoformat(),
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in keys
        ]
        print(json.dumps(rows))
        return 0
    for k in keys:
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M:%S}" if k.revoked_at else "active"
        print(f"{k.id}  {k.tenant}  created {k.created_at:%Y-%m-%d %H:%M:%S}  {state}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from service.auth import revoke_key
    from service.db import session_scope

    with session_scope(_session_factory(args)) as session:
        info = revoke_key(session, args.key_id)
    print(f"revoked {info.id} (tenant {info.tenant!r})")
    return 0


def run_webhook_secret(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from cli.errors import CliError
    from service.db import session_scope
    from service.models import Tenant
    from service.webhooks import signing_secret

    with session_scope(_session_factory(args)) as session:
        tenant_id = None
        if args.tenant is not None:
            tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == args.tenant.strip()))
            if tenant_id is None:
                raise CliError("tenant_not_found", f"no tenant {args.tenant!r}; `clipforge keys create --tenant NAME` creates one")
        secret = signing_secret(session, tenant_id, rotate=args.rotate)
    print(secret, flush=True)  # alone on stdout, as a key is
    return 0
