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


def test_metrics_are_for_loopback_or_the_scrapers_token(tmp_path):
    """/metrics counts every tenant: a remote client (behind a local proxy) is refused unless it sends the token."""
    remote = {"X-Forwarded-For": "203.0.113.7"}
    with ApiThread(settings_for(tmp_path / "open")) as server, server.client() as client:
        assert client.get("/metrics").status_code == 200
        refused = client.get("/metrics", headers=remote)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "metrics_loopback_only"
    with ApiThread(settings_for(tmp_path / "token", metrics_token="s3cret-scrape")) as server, server.client() as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {**remote, "Authorization": "Bearer s3cret-scraper"}):
            refused = client.get("/metrics", headers=headers)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_metrics_token", headers
        scraped = client.get("/metrics", headers={**remote, "Authorization": "Bearer s3cret-scrape"})
        assert scraped.status_code == 200 and "clipforge_http_requests_total" in scraped.text
    # An empty variable (compose's `${CLIPFORGE_METRICS_TOKEN:-}`) is no token: "Bearer " must not open /metrics.
    empty = settings_for(tmp_path / "empty", metrics_token=" ")
    assert empty.metrics_token is None
    with ApiThread(empty) as server, server.client() as client:
        refused = client.get("/metrics", headers={**remote, "Authorization": "Bearer"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "metrics_loopback_only"
