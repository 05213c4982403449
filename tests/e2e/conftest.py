"""The end-to-end tests' shared service: `clipforge serve` (API + worker, no external servers) on a free port."""

from __future__ import annotations

import signal

import pytest

from client import ClipforgeClient
from tests.servers import free_port, service_env, start_cli, wait_until


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("serve")
    port = free_port()
    process = start_cli(["serve", "--port", str(port)], service_env(data_dir), data_dir / "serve.log")
    client = ClipforgeClient(f"http://127.0.0.1:{port}")

    def ready() -> bool:
        try:
            return client.ready().status == "ready"
        except Exception:
            return False

    try:
        wait_until(ready, 60, 0.2, "clipforge serve ready")
        yield client, data_dir, process
    finally:
        client.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
