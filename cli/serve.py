"""`clipforge serve|api|worker|migrate`: the service's processes.

``serve`` is the embedded mode: the API (uvicorn) and one worker, with SQLite, kombu's server-less
SQLAlchemy transport and local storage, so that no other server is needed. Settings come from
``CLIPFORGE_*`` environment variables, ``.env`` and ``--config FILE`` (KEY=VALUE lines); flags win.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

WORKER_RESTART_DELAY_S = 2.0
WORKER_STOP_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="settings file (CLIPFORGE_*=VALUE lines)")
    parser.add_argument("--data-dir", default=None, help="root of the embedded defaults (CLIPFORGE_DATA_DIR)")


def add_commands(groups: argparse._SubParsersAction) -> None:
    serve = groups.add_parser("serve", help="the API and one worker in one command, with no external servers")
    _common(serve)
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--device", default=None, help="the worker's device: auto, cpu, cuda, cuda:N")
    serve.set_defaults(handler=run_serve)

    api = groups.add_parser("api", help="the HTTP API only (uvicorn)")
    _common(api)
    api.add_argument("--host", default=None)
    api.add_argument("--port", type=int, default=None)
    api.set_defaults(handler=run_api)

    worker = groups.add_parser("worker", help="a job worker only (one job at a time on its device)")
    _common(worker)
    worker.add_argument("--queues", default=None, help="comma-separated queues (default: CLIPFORGE_QUEUE, gpu)")
    worker.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (CLIPFORGE_DEVICE)")
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(handler=run_worker_command)

    migrate = groups.add_parser("migrate", help="upgrade the database schema (or downgrade with --revision)")
    _common(migrate)
    migrate.add_argument("--revision", default="head")
    migrate.add_argument("--downgrade", action="store_true", help="downgrade to --revision instead")
    migrate.set_defaults(handler=run_migrate)


def _settings(args: argparse.Namespace):
    # Flags become environment variables, so that a worker started by `serve` sees the same settings.
    for flag, variable in (("data_dir", "DATA_DIR"), ("host", "HOST"), ("port", "PORT"), ("device", "DEVICE")):
        value = getattr(args, flag, None)
        if value is not None:
            os.environ[f"CLIPFORGE_{variable}"] = str(value)
    from service.settings import get_settings

    return get_settings(args.config.resolve() if args.config else None)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def check_exposure_or_exit(settings, migrate_first: bool) -> None:  # settings: service.settings.Settings
    """Before anything starts: without any API key, a non-loopback address is refused (error [api_keys_required], exit 2)
    and loopback runs open, with a warning printed."""
    from service.auth import check_exposure
    from service.db import make_engine, make_session_factory, migrate

    if migrate_first:
        settings.ensure_local_dirs()
        migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        notice = check_exposure(settings, make_session_factory(engine))
    finally:
        engine.dispose()
    if notice:
        print(f"WARNING: {notice}", file=sys.stderr, flush=True)


def run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    settings = _settings(args)
    _logging()
    check_exposure_or_exit(settings, migrate_first=settings.migrate_on_start)
    signal.signal(signal.SIGTERM, _exit_on_signal)  # a graceful shutdown exits 0 (see run_serve)
    uvicorn.run(create_app(settings, prepared=True), host=settings.host, port=settings.port, log_level="info")
    return 0


def run_worker_command(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _logging()
    from worker.app import run_worker

    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    run_worker(settings, queues, loglevel=args.loglevel)
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    from service.db import downgrade, migrate

    settings = _settings(args)
    settings.ensure_local_dirs()
    if args.downgrade:
        downgrade(settings.database_url, args.revision)
    else:
        migrate(settings.database_url, args.revision)
    print(f"database {settings.database_url} at revision {args.revision}{' (downgraded)' if args.downgrade else ''}")
    return 0


def _die_with_parent() -> None:
    """In the worker child: receive SIGTERM when `serve` dies, even by SIGKILL, so that no worker is orphaned (Linux)."""
    # Not Linux: no prctl, and the supervisor's own stop() still ends the worker on a normal shutdown.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class WorkerSupervisor:
    """Keeps one worker subprocess alive beside the API; restarts it when it dies, stops it on shutdown."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.process = subprocess.Popen(self.command, preexec_fn=_die_with_parent)
            code = self.process.wait()
            if self.stopping.is_set():
                return
            logging.getLogger("clipforge.serve").warning("worker exited with status %s; restarting", code)
            self.stopping.wait(WORKER_RESTART_DELAY_S)

    def stop(self) -> None:
        self.stopping.set()
        process = self.process
        if process is None or process.poll() is not None:
            return
        # SIGTERM is Celery's warm shutdown: a running job finishes (or its message is returned to the queue).
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from service.db import migrate

    settings = _settings(args)
    _logging()
    settings.ensure_local_dirs()
    migrate(settings.database_url)
    check_exposure_or_exit(settings, migrate_first=False)  # before the worker starts
    command = [sys.executable, "-m", "cli.main", "worker"]
    if args.config:
        command += ["--config", str(args.config.resolve())]
    supervisor = WorkerSupervisor(command)
    supervisor.start()
    # uvicorn shuts down gracefully on SIGTERM and then re-raises it; this handler turns that into a normal exit,
    # so that the worker is stopped too instead of being orphaned.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run(create_app(settings, prepared=True), host=settings.host, port=settings.port, log_level="info")
    finally:
        supervisor.stop()
    return 0
