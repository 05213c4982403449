"""Alembic migrations upgrade and downgrade on SQLite and on a real PostgreSQL, and match the ORM tables."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from service.db import downgrade, make_engine, migrate
from service.models import Base

TABLES = {"jobs", "job_events", "artifacts", "uploads"}


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
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"
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
