"""Settings come from CLIPFORGE_* variables, a config file and defaults derived from the data dir."""

from __future__ import annotations

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
