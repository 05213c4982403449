"""Redis, the broker, killed (SIGKILL) while jobs are queued and started again on its port with its append-only file
(``--appendonly yes``, as in docker-compose.yml).

While it is down the API answers POST /v1/jobs with 503 ``broker_unavailable`` within seconds and keeps no job row
for it (the row is rolled back, so that no queued job waits for a message that was never sent); reads keep working
from the database. After the restart nothing queued is lost: one worker runs every job to success.
"""

from __future__ import annotations

import time

import httpx

from tests.faults.conftest import elapsed, restartable_redis
from tests.servers import TINY_SPEC
from tests.worker.conftest import open_service

MAX_REFUSAL_SECONDS = 5.0


def test_jobs_queued_across_a_redis_restart_all_run_and_submissions_fail_fast_while_it_is_down(tmp_path):
    with restartable_redis(tmp_path / "redis") as redis, open_service(tmp_path / "service", broker_url=redis.url) as service:
        # No worker yet: the jobs wait in Redis only.
        queued = [service.submit({**TINY_SPEC, "classes": ["circle", "square"], "seed": seed}) for seed in (1, 2)]
        redis.kill()

        began = time.monotonic()
        refused = service.http.post("/v1/jobs", json={**TINY_SPEC, "classes": ["star", "ring"]}, headers={"Idempotency-Key": "retry-me"})
        took = elapsed(began)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "broker_unavailable", refused.text
        assert took < MAX_REFUSAL_SECONDS, f"the refusal took {took:.1f} s"
        listing = service.http.get("/v1/jobs")
        assert listing.status_code == 200
        assert sorted(j["id"] for j in listing.json()["data"]) == sorted(j["id"] for j in queued)  # nothing half-created
        assert all(service.job(j["id"])["status"] == "queued" for j in queued)
        assert service.http.get(f"/v1/jobs/{queued[0]['id']}/events").status_code == 200
        ready = service.http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["details"]["broker"].startswith("error")

        redis.start()
        # The client's retry with the same key now creates the job: the refused attempt left no row to replay.
        retried = service.http.post("/v1/jobs", json={**TINY_SPEC, "classes": ["star", "ring"]}, headers={"Idempotency-Key": "retry-me"})
        assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers, retried.text
        service.start_worker()
        for job in [*queued, retried.json()]:
            done = service.wait_finished(job["id"], timeout=180)
            assert done["status"] == "succeeded" and done["attempts"] == 1, done
        assert httpx.get(f"{service.api.url}/readyz", timeout=10).status_code == 200


def test_a_hung_redis_is_answered_with_503_in_seconds_and_nothing_is_lost_after_it_recovers(tmp_path):
    """Redis frozen with SIGSTOP accepts connections and never answers: submissions must still fail fast (socket
    timeouts, not a hang), reads keep answering, and once it runs again the next submission and the queued job run."""
    with restartable_redis(tmp_path / "redis") as redis, open_service(tmp_path / "service", broker_url=redis.url) as service:
        queued = service.submit({**TINY_SPEC, "classes": ["circle", "square"], "seed": 1})
        redis.freeze()
        try:
            began = time.monotonic()
            refused = service.http.post("/v1/jobs", json={**TINY_SPEC, "classes": ["star", "ring"]})
            took = elapsed(began)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "broker_unavailable", refused.text
            assert took < MAX_REFUSAL_SECONDS, f"the refusal took {took:.1f} s"
            began = time.monotonic()
            assert service.job(queued["id"])["status"] == "queued"
            assert elapsed(began) < 1.0, "a status read waited for the broker"
            assert [j["id"] for j in service.http.get("/v1/jobs").json()["data"]] == [queued["id"]]  # nothing half-created
        finally:
            redis.thaw()
        accepted = service.http.post("/v1/jobs", json={**TINY_SPEC, "classes": ["star", "ring"], "seed": 2})
        assert accepted.status_code == 201, accepted.text
        service.start_worker()
        for job in (queued, accepted.json()):
            done = service.wait_finished(job["id"], timeout=180)
            assert done["status"] == "succeeded" and done["attempts"] == 1, done
