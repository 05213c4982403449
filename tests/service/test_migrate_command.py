"""`clipforge migrate` upgrades (and with --downgrade, downgrades) the configured database."""

from __future__ import annotations

from sqlalchemy import inspect

from cli.main import main
from service.db import make_engine
from service.settings import get_settings


def test_migrate_command_up_and_down(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLIPFORGE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CLIPFORGE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        assert main(["migrate"]) == 0
        engine = make_engine(f"sqlite:///{tmp_path / 'clipforge.db'}")
        assert {"jobs", "job_events", "artifacts", "uploads"} <= set(inspect(engine).get_table_names())
        assert main(["migrate", "--downgrade", "--revision", "base"]) == 0
        assert "jobs" not in set(inspect(engine).get_table_names())
        engine.dispose()
    finally:
        get_settings.cache_clear()
    assert "at revision base (downgraded)" in capsys.readouterr().out
