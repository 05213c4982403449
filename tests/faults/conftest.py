"""Fault-injection helpers: a persistent Redis to kill and restart (tests.servers.RestartableRedis), a tmpfs mount for
the storage folder (disk full, read-only) and `clipforge api` as its own killable process."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.servers import RestartableRedis, free_port, service_env, start_cli, stop_process, wait_until


@contextmanager
def restartable_redis(folder: Path) -> Iterator[RestartableRedis]:
    redis = RestartableRedis(folder)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


def mount_tmpfs(folder: Path, options: str) -> None:
    """A real small filesystem (needs root, as in CI); ``options`` e.g. ``size=64k`` or ``ro,size=64k``."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "clipforge-fault", str(folder)], check=True, capture_output=True)


def remount(folder: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True, capture_output=True)


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


class ApiProcess:
    """`clipforge api` in its own process group on a fixed port, so that a test can kill it and start it again."""

    def __init__(self, data_dir: Path, **overrides: object) -> None:
        self.data_dir, self.port = data_dir, free_port()
        self.env = service_env(data_dir, host="127.0.0.1", port=self.port, **overrides)
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        self.process = start_cli(["api"], self.env, self.data_dir / "api.log")

        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, 0.1, "clipforge api ready")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def elapsed(began: float) -> float:
    return time.monotonic() - began
