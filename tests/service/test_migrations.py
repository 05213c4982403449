"""Alembic migrations upgrade and downgrade on SQLite and on a real PostgreSQL, and match the ORM tables."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from service.db import downgrade, make_engine, migrate
from service.models import Base

TABLES = {
    "jobs",
    "job_events",
    "artifacts",
    "uploads",
    "tenants",
    "api_keys",
    "service_counters",
    "webhook_secrets",
    "webhook_deliveries",
    "webhook_attempts",
    "evaluations",
    "evaluation_images",
    "evaluation_artifacts",
    "job_chunks",
    "pools",
    "pool_images",
    "pool_embeddings",
}
HEAD = "0009"


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _check_round_trip(url: str) -> None:
    migrate(url)
    assert _tables(url) >= TABLES
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            # The migrated schema is exactly what the ORM maps: no drift between the two.
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
    finally:
        engine.dispose()
    migrate(url)  # a second upgrade at start-up is a no-op
    downgrade(url, "base")
    assert _tables(url).isdisjoint(TABLES)
    migrate(url)
    assert _tables(url) >= TABLES


def test_sqlite_upgrade_downgrade(tmp_path):
    _check_round_trip(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_postgresql_upgrade_downgrade(postgres_url):
    _check_round_trip(postgres_url)
    downgrade(postgres_url, "base")


def test_plain_postgresql_urls_use_psycopg3(postgres_url):
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    engine = make_engine(plain)
    try:
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


@pytest.mark.parametrize("runs", [2])
def test_concurrent_start_up_migrations_on_sqlite(tmp_path, runs):
    # The API and the worker both migrate at start-up; the lock file makes them take turns.
    import threading

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and _tables(url) >= TABLES


def _jobs_columns(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns("jobs")}
    finally:
        engine.dispose()


def _check_tenants_migration_keeps_jobs(url: str) -> None:
    """0001 -> 0002 -> 0001 with a job in the table: the job survives both ways, with no tenant after the upgrade."""
    migrate(url, "0001")
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO jobs (id, status, progress, spec, seed, teacher, attempts, created_at, updated_at, idempotency_key) "
                    "VALUES ('job_old', 'queued', 0, '{}', 1, 'shapes-mini', 0, '2026-11-28 00:00:00', '2026-11-28 00:00:00', 'k1')"
                )
            )
        assert "tenant_id" not in _jobs_columns(url)
        migrate(url, "0002")
        assert "tenant_id" in _jobs_columns(url) and _tables(url) >= {"tenants", "api_keys"}
        with engine.begin() as connection:
            row = connection.execute(text("SELECT tenant_id, idempotency_key FROM jobs WHERE id = 'job_old'")).one()
            assert tuple(row) == (None, "k1")
            connection.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('ten_a', 'acme', '2026-11-28 00:00:00')"))
            connection.execute(
                text("INSERT INTO api_keys (id, tenant_id, secret_hash, created_at) VALUES ('key_a', 'ten_a', :h, '2026-11-28 00:00:00')"),
                {"h": "0" * 64},
            )
            connection.execute(
                text(
                    "INSERT INTO jobs (id, tenant_id, status, progress, spec, seed, teacher, attempts, created_at, updated_at, "
                    "idempotency_key) VALUES ('job_new', 'ten_a', 'queued', 0, '{}', 1, 'shapes-mini', 0, '2026-11-28 00:00:00', "
                    "'2026-11-28 00:00:00', :k)"
                ),
                {"k": "ten_a:" + "k" * 200},  # longer than 0001's column allowed
            )
        engine.dispose()
        downgrade(url, "0001")
        assert "tenant_id" not in _jobs_columns(url) and _tables(url).isdisjoint({"tenants", "api_keys"})
        with engine.connect() as connection:
            rows = dict(connection.execute(text("SELECT id, idempotency_key FROM jobs ORDER BY id")).all())
        assert rows == {"job_new": None, "job_old": "k1"}
    finally:
        engine.dispose()
    downgrade(url, "base")


def test_tenants_migration_on_sqlite(tmp_path):
    _check_tenants_migration_keeps_jobs(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_tenants_migration_on_postgresql(postgres_url):
    downgrade(postgres_url, "base")
    _check_tenants_migration_keeps_jobs(postgres_url)


def _check_outbox_migration(url: str) -> None:
    """0002 -> 0003 -> 0002: the queued jobs of before are flagged for the reaper to publish once more (their message
    may have been lost), finished ones are not; the downgrade drops the column and its index."""
    downgrade(url, "base")
    migrate(url, "0002")
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            for job_id, status in (("job_queued", "queued"), ("job_done", "succeeded")):
                connection.execute(
                    text(
                        "INSERT INTO jobs (id, status, progress, spec, seed, teacher, attempts, created_at, updated_at) "
                        "VALUES (:id, :status, 0, '{}', 1, 'shapes-mini', 0, '2026-11-28 00:00:00', '2026-11-28 00:00:01')"
                    ),
                    {"id": job_id, "status": status},
                )
        assert "publish_due_at" not in _jobs_columns(url)
        migrate(url, "0003")
        assert "ix_jobs_publish_due_at" in {index["name"] for index in inspect(engine).get_indexes("jobs")}
        with engine.connect() as connection:
            rows = dict(connection.execute(text("SELECT id, publish_due_at FROM jobs")).all())
        assert rows["job_done"] is None and str(rows["job_queued"]).startswith("2026-11-28 00:00:01")
        engine.dispose()
        downgrade(url, "0002")
        assert "publish_due_at" not in _jobs_columns(url)
        assert "ix_jobs_publish_due_at" not in {index["name"] for index in inspect(engine).get_indexes("jobs")}
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM jobs")).scalar() == 2
    finally:
        engine.dispose()
    downgrade(url, "base")


def test_outbox_migration_on_sqlite(tmp_path):
    _check_outbox_migration(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_outbox_migration_on_postgresql(postgres_url):
    _check_outbox_migration(postgres_url)
