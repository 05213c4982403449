"""`clipforge api` killed (SIGKILL) while a job runs, then started again: the job keeps running in its worker, and the
new API process reports its progress from the database, then its success; the job is not restarted."""

from __future__ import annotations

import httpx

from tests.faults.conftest import ApiProcess
from tests.servers import SLOW_SPEC, service_env, start_cli, stop_process, wait_until


def _job(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()


def test_api_killed_and_restarted_while_a_job_runs_reports_its_progress_and_success(tmp_path):
    api = ApiProcess(tmp_path)
    api.start()
    worker = start_cli(["worker", "--loglevel", "WARNING"], service_env(tmp_path), tmp_path / "worker.log")
    try:
        created = httpx.post(f"{api.url}/v1/jobs", json={**SLOW_SPEC, "classes": ["circle", "square", "star"], "seed": 7}, timeout=10)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        before = wait_until(lambda: (j := _job(api.url, job_id))["stage"] == "synthesizing" and j, 120, 0.1, "job synthesizing")
        api.kill()
        try:
            httpx.get(f"{api.url}/healthz", timeout=1)
            raise AssertionError("the killed API still answers")
        except httpx.ConnectError:
            pass
        api.start()
        # The restarted API sees the job as its worker leaves it: still the first attempt, progress moving, then done.
        during = _job(api.url, job_id)
        assert during["status"] in ("running", "succeeded") and during["attempts"] == 1, during
        assert during["progress"] >= before["progress"]
        if during["status"] == "running":
            wait_until(lambda: _job(api.url, job_id)["progress"] > during["progress"], 60, 0.1, "progress after the restart")
        done = wait_until(lambda: (j := _job(api.url, job_id))["status"] not in ("queued", "running") and j, 180, 0.2, "job finished")
        assert done["status"] == "succeeded" and done["attempts"] == 1 and done["progress"] == 1.0, done
        events = httpx.get(f"{api.url}/v1/jobs/{job_id}/events", params={"limit": 500}, timeout=10).json()["data"]
        assert [e["status"] for e in events if e["kind"] == "status"] == ["queued", "running", "succeeded"]
        assert not [e for e in events if e["kind"] == "warning"]  # no lease was lost, nothing requeued
        artifacts = httpx.get(f"{api.url}/v1/jobs/{job_id}/artifacts", timeout=10).json()["data"]
        assert len(artifacts) == 5
    finally:
        stop_process(worker)
        api.stop()
