"""Real servers for the service tests: Redis, a throwaway PostgreSQL cluster, the API (uvicorn) and worker processes.

No mocks: the tests speak HTTP to uvicorn on a free port and run real Celery workers. Missing
redis-server or PostgreSQL binaries fail loudly (.ci/run installs them).
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
# Budgets far below the defaults: these tests check the service's machinery, not the student's quality.
TINY_SPEC = {
    "synthesis": {"images_per_class": 4, "steps": 6, "cutouts": 1, "batch_size": 12},
    "distillation": {"epochs": 2, "warmup_epochs": 1, "batch_size": 8},
    "student": {"arch": "tiny_cnn"},
}
# Long enough to be cancelled or killed while synthesizing (10 to 30 s on 2 cores), yet with tiny artifacts.
SLOW_SPEC = {**TINY_SPEC, "synthesis": {"images_per_class": 4, "steps": 20, "cutouts": 1, "batch_size": 12}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(interval)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def stop_process(process: subprocess.Popen, timeout: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------------------
# Redis and PostgreSQL
# ------------------------------------------------------------------------------------------


class RestartableRedis:
    """redis-server on a free port, killable, freezable and restartable on the same port and data folder, so that the
    service's broker URL stays valid across a restart. ``appendonly``: the production compose file's persistence."""

    def __init__(self, folder: Path, appendonly: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server); the service tests need it")
        self.binary, self.folder, self.port, self.appendonly = binary, folder, free_port(), appendonly
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                   "--appendonly", "yes" if self.appendonly else "no", "--save", ""]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=(self.folder / "redis.log").open("ab"), stderr=subprocess.STDOUT)
        wait_until(lambda: _port_open(self.port), 15, what="redis-server listening")

    def kill(self) -> None:
        """SIGKILL: no shutdown save, only what the append-only file already holds survives."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        wait_until(lambda: not _port_open(self.port), 5, what="redis-server gone")

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections (the kernel's backlog) but nothing answers, like a hung server."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
            stop_process(self.process)


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server without persistence; yields its URL."""
    folder = Path(tempfile.mkdtemp(prefix="clipforge-redis-"))
    redis = RestartableRedis(folder, appendonly=False)
    try:
        redis.start()
        yield redis.url
    finally:
        redis.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _postgres_bin(name: str) -> str:
    candidates = [shutil.which(name), *sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"PostgreSQL's {name} is not installed (apt-get install -y postgresql); the migration tests need it")


class ThrowawayPostgres:
    """A cluster in a temp dir on a free port, run as the `postgres` user when we are root (postgres refuses root);
    stoppable and startable again on the same port and data, so that a service's database URL stays valid."""

    def __init__(self) -> None:
        initdb, self.binary = _postgres_bin("initdb"), _postgres_bin("postgres")
        self.folder = Path(tempfile.mkdtemp(prefix="clipforge-pg-"))
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.run_as = ["runuser", "-u", "postgres", "--"]
        self.data = self.folder / "data"
        initialise = [*self.run_as, initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"]
        subprocess.run(initialise, check=True, capture_output=True)
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        import psycopg

        command = [*self.run_as, self.binary, "-D", str(self.data), "-p", str(self.port), "-k", str(self.folder),
                   "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def accepting() -> bool:
            try:
                psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", connect_timeout=1).close()
                return True
            except psycopg.OperationalError:
                return False

        wait_until(accepting, 30, interval=0.2, what="postgres accepting connections")

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster itself): it disconnects clients, where SIGTERM would wait for them and
        runuser would SIGKILL the postmaster 2 s later, leaving its backends and shared memory behind."""
        if self.process is None:
            return
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
            wait_until(lambda: not pid_file.exists(), 30, what="postgres shut down")
        stop_process(self.process)
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway cluster (see ThrowawayPostgres); yields its URL."""
    server = ThrowawayPostgres()
    try:
        server.start()
        yield server.url
    finally:
        server.remove()


# ------------------------------------------------------------------------------------------
# The service's own processes
# ------------------------------------------------------------------------------------------


def service_env(data_dir: Path, **overrides: object) -> dict[str, str]:
    """Settings for a test service: everything under ``data_dir``, short leases and fast polling."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPFORGE_")}
    env.update(
        CLIPFORGE_DATA_DIR=str(data_dir),
        CLIPFORGE_DEVICE="cpu",
        CLIPFORGE_LEASE_SECONDS="3",
        CLIPFORGE_REAPER_INTERVAL_SECONDS="0.5",
        CLIPFORGE_PROGRESS_INTERVAL_SECONDS="0.2",
        CLIPFORGE_CANCEL_CHECK_INTERVAL_SECONDS="0.2",
        CLIPFORGE_BROKER_POLLING_INTERVAL_SECONDS="0.2",
        OMP_NUM_THREADS="2",
    )
    env.update({f"CLIPFORGE_{k.upper()}": json.dumps(v) if isinstance(v, list) else str(v) for k, v in overrides.items()})
    return env


def start_cli(args: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen:
    handle = log.open("ab")
    # A new session: a test can SIGKILL the worker alone, and nothing leaks into pytest's process group.
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=dict(env), stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


class ApiThread:
    """The real app under uvicorn on a free port, in a thread of the test process."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from api.app import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ApiThread:
        self.thread.start()
        wait_until(lambda: self.server.started, 30, 0.05, "uvicorn started")
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


def settings_for(data_dir: Path, **overrides: object) -> Settings:
    env = service_env(data_dir)
    values: dict[str, object] = {k.removeprefix("CLIPFORGE_").lower(): v for k, v in env.items() if k.startswith("CLIPFORGE_")}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]
