"""`clipforge api` as production runs it: its own process, settings from CLIPFORGE_* variables, no torch loaded."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from tests.servers import free_port, service_env, start_cli, stop_process, wait_until


def test_api_command_serves_without_loading_torch(tmp_path):
    port = free_port()
    env = service_env(tmp_path, host="127.0.0.1", port=port)
    process = start_cli(["api"], env, tmp_path / "api.log")
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 60, 0.2, "clipforge api ready")
        job = httpx.post(f"http://127.0.0.1:{port}/v1/jobs", json={"classes": ["cat", "dog"]}, timeout=10)
        assert job.status_code == 201 and job.json()["status"] == "queued"
        assert (tmp_path / "clipforge.db").is_file() and (tmp_path / "storage").is_dir()  # migrated at start-up, from the env
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "libtorch" not in maps and "libc10" not in maps
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        # Start-up migrates and checks the exposure rule once (the command does it; the app's lifespan does not redo it).
        log = (tmp_path / "api.log").read_text()
        assert log.count("Context impl SQLiteImpl") == 1, log  # alembic's line per migration run
        assert log.count("OPEN") == 1, log  # the open-mode notice (loopback, no API keys)
    finally:
        stop_process(process)
