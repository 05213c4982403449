"""Liveness, readiness of each dependency, and Prometheus metrics."""

from __future__ import annotations

from tests.servers import ApiThread, free_port, settings_for


def test_healthz_and_readyz(http):
    assert http.get("/healthz").json()["status"] == "ok"
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}


def test_readyz_names_an_unreachable_broker(tmp_path):
    settings = settings_for(tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    with ApiThread(settings) as server, server.client() as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "not_ready" and error["details"]["database"] == "ok" and error["details"]["broker"].startswith("error")


def test_metrics_count_requests_and_jobs(http):
    http.post("/v1/jobs", json={"classes": ["a", "b"]})
    http.get("/v1/jobs")
    text = http.get("/metrics").text
    assert 'clipforge_http_requests_total{method="POST",route="/v1/jobs",status="201"}' in text
    assert "clipforge_jobs_submitted_total" in text
    assert 'clipforge_jobs{status="queued"}' in text
