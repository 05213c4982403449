"""Settings come from CLIPFORGE_* variables, a config file and defaults derived from the data dir."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings, get_settings


def test_defaults_derive_from_the_data_dir(tmp_path, monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("CLIPFORGE_"):
            monkeypatch.delenv(key)
    settings = Settings(_env_file=None, data_dir=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path / 'clipforge.db'}"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    assert settings.storage_root == tmp_path / "storage"
    assert settings.default_teacher == "shapes-mini" and settings.queue == "gpu"


def test_environment_overrides_the_config_file(tmp_path, monkeypatch):
    config = tmp_path / "clipforge.env"
    config.write_text("CLIPFORGE_PORT=9001\nCLIPFORGE_DEVICE=cuda:1\nCLIPFORGE_STORAGE_DIR=/srv/blobs\n")
    monkeypatch.setenv("CLIPFORGE_DEVICE", "cpu")
    monkeypatch.setenv("CLIPFORGE_DATABASE_URL", "postgresql://u@db/clipforge")
    monkeypatch.setenv("CLIPFORGE_BROKER_URL", "redis://broker:6379/0")
    get_settings.cache_clear()
    try:
        settings = get_settings(config)
        assert get_settings(config) is settings  # built once
    finally:
        get_settings.cache_clear()
    assert settings.port == 9001 and settings.device == "cpu" and str(settings.storage_dir) == "/srv/blobs"
    assert settings.database_url == "postgresql://u@db/clipforge" and settings.broker_url == "redis://broker:6379/0"


@pytest.mark.parametrize("url", ["file:///srv/blobs", "s3://", "s3:///prefix", "s3://bucket/../up", "s3://bucket/a//b", "s3://bucket?x=1"])
def test_a_storage_url_that_is_no_bucket_stops_the_settings(tmp_path, url):
    with pytest.raises(ValidationError, match="storage"):
        Settings(_env_file=None, data_dir=tmp_path, storage_url=url)


def test_object_storage_creates_no_storage_folder(tmp_path):
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", storage_url="s3://clipforge/prod")
    assert settings.uses_object_storage and not settings.storage_presigned_downloads  # streaming through the API by default
    settings.ensure_local_dirs()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []  # SQLite's folder only: no storage folder in it
    local = Settings(_env_file=None, data_dir=tmp_path / "local")
    local.ensure_local_dirs()
    assert local.storage_root.is_dir() and not local.uses_object_storage
