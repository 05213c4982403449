from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.servers import ApiThread, service_env, settings_for, start_cli, stop_process, wait_until


@dataclass
class Service:
    """The API in this process and real `clipforge worker` processes, sharing a database, a broker and storage."""

    data_dir: Path
    overrides: dict[str, object]
    api: ApiThread
    http: httpx.Client
    workers: list = field(default_factory=list)

    @property
    def storage(self) -> Path:
        return self.data_dir / "storage"

    def start_worker(self):
        process = start_cli(["worker", "--loglevel", "WARNING"], service_env(self.data_dir, **self.overrides), self.data_dir / "worker.log")
        self.workers.append(process)
        return process

    def submit(self, spec: dict, **kwargs) -> dict:
        response = self.http.post("/v1/jobs", json=spec, **kwargs)
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/v1/jobs/{job_id}").json()

    def wait_for(self, job_id: str, condition: Callable[[dict], bool], timeout: float = 120, what: str = "job state") -> dict:
        def check() -> dict | None:
            job = self.job(job_id)
            return job if condition(job) else None

        try:
            return wait_until(check, timeout, 0.1, what)  # type: ignore[return-value]
        except TimeoutError:
            log = (self.data_dir / "worker.log").read_text()[-3000:] if (self.data_dir / "worker.log").exists() else ""
            raise AssertionError(f"{what} not reached: {self.job(job_id)}\nworker log:\n{log}") from None

    def wait_finished(self, job_id: str, timeout: float = 120) -> dict:
        return self.wait_for(job_id, lambda j: j["status"] in ("succeeded", "failed", "cancelled"), timeout, "job finished")

    def events(self, job_id: str) -> list[dict]:
        return self.http.get(f"/v1/jobs/{job_id}/events", params={"limit": 500}).json()["data"]


def open_service(data_dir: Path, **overrides: object):
    from contextlib import contextmanager

    @contextmanager
    def manager():
        with ApiThread(settings_for(data_dir, **overrides)) as api, api.client() as http:
            service = Service(data_dir, overrides, api, http)
            try:
                yield service
            finally:
                for process in service.workers:
                    stop_process(process)

    return manager()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The embedded transport (kombu's SQLAlchemy transport on SQLite) with one worker."""
    with open_service(tmp_path_factory.mktemp("embedded")) as service:
        service.start_worker()
        yield service


def started(job: dict) -> bool:
    return job["status"] == "running" and job["stage"] in ("synthesizing", "distilling")


def now() -> float:
    return time.monotonic()
