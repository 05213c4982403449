"""Webhooks over real HTTP: a real local receiver, the API's own dispatcher thread, signatures checked as a receiver
would (Standard Webhooks), retries while the receiver is down, giving up on one that always fails, SSRF refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from service import jobs as repo
from service import webhooks
from service.db import session_scope
from service.webhooks import signing_secret
from tests.servers import ApiThread, free_port, settings_for, wait_until

FAST = {
    "webhook_allow_private_targets": True,  # the receiver is on loopback
    "webhook_retry_base_seconds": 0.3,
    "webhook_interval_seconds": 0.1,
    "webhook_max_attempts": 4,
    "webhook_timeout_seconds": 2,
}


class Receiver:
    """An HTTP server on loopback that records every POST and answers ``status``."""

    def __init__(self, port: int | None = None, status: int = 200) -> None:
        self.port, self.status, self.requests = port or free_port(), status, []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append((dict(self.headers.items()), body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/clipforge"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hooked(tmp_path_factory) -> Iterator[ApiThread]:
    with ApiThread(settings_for(tmp_path_factory.mktemp("webhooks"), **FAST)) as api:
        yield api


def _finish(api: ApiThread, job_id: str, status: str = repo.SUCCEEDED) -> None:
    """A stand-in worker on the real database: claims the job and ends it."""
    with session_scope(api.app.state.session_factory) as session:
        assert repo.claim(session, job_id, "hook-test", lease_seconds=60, max_attempts=3) is not None
    with session_scope(api.app.state.session_factory) as session:
        code = "boom" if status == repo.FAILED else None
        assert repo.finish(session, job_id, "hook-test", status, code=code, message="it broke" if code else None)


def _deliveries(client, job_id: str) -> list[dict]:
    return client.get(f"/v1/jobs/{job_id}/webhook-deliveries").json()["data"]


def _verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does (Standard Webhooks): HMAC-SHA256 over id.timestamp.body with the secret's bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, s.removeprefix("v1,")) for s in headers["webhook-signature"].split())


def test_a_finished_job_is_delivered_once_with_a_valid_signature(hooked):
    receiver = Receiver()
    try:
        with hooked.client() as client:
            job = client.post("/v1/jobs", json={"classes": ["a", "b"], "webhook_url": receiver.url}).json()
            assert job["webhook_url"] == receiver.url and job["webhook_events"] == list(webhooks.EVENTS)
            _finish(hooked, job["id"])
            wait_until(lambda: receiver.requests, 10, what="the webhook delivered")
            time.sleep(1.0)  # a second delivery would have come by now
            assert len(receiver.requests) == 1
            headers, body = receiver.requests[0]
            with session_scope(hooked.app.state.session_factory) as session:
                secret = signing_secret(session, None)
            assert _verify(secret, headers, body) and abs(int(headers["webhook-timestamp"]) - time.time()) < 30
            payload = json.loads(body)
            assert payload["type"] == "job.succeeded" and payload["data"]["id"] == job["id"] and payload["data"]["status"] == "succeeded"
            (delivery,) = _deliveries(client, job["id"])
            assert delivery["status"] == "delivered" and delivery["id"] == headers["webhook-id"]
            assert [(a["attempt"], a["status_code"], a["error"]) for a in delivery["attempts"]] == [(1, 200, None)]
            assert not _verify("whsec_" + base64.b64encode(b"x" * 24).decode(), headers, body)  # another secret fails
    finally:
        receiver.close()


def test_a_receiver_down_for_a_while_gets_the_delivery_after_retries(hooked):
    port = free_port()
    with hooked.client() as client:
        job = client.post("/v1/jobs", json={"classes": ["a", "b"], "webhook_url": f"http://127.0.0.1:{port}/h"}).json()
        _finish(hooked, job["id"], repo.FAILED)
        wait_until(lambda: len(_deliveries(client, job["id"])[0]["attempts"]) >= 2, 15, what="two failed attempts")
        receiver = Receiver(port)  # up again, on the same port
        try:
            delivered = wait_until(
                lambda: (d := _deliveries(client, job["id"])[0])["status"] == "delivered" and d, 20, what="delivered after retries"
            )
            assert len(receiver.requests) == 1 and json.loads(receiver.requests[0][1])["type"] == "job.failed"
            attempts = delivered["attempts"]
            assert attempts[-1]["status_code"] == 200 and all(a["status_code"] is None and a["error"] for a in attempts[:-1])
            gaps = [(b - a) for a, b in zip(_times(attempts), _times(attempts)[1:], strict=False)]
            assert all(g > 0.2 for g in gaps)  # backed off between attempts, not hammered
        finally:
            receiver.close()


def _times(attempts: list[dict]) -> list[float]:
    from datetime import datetime

    return [datetime.fromisoformat(a["at"]).timestamp() for a in attempts]


def test_a_receiver_that_always_fails_is_given_up_after_the_configured_attempts(hooked):
    receiver = Receiver(status=500)
    try:
        with hooked.client() as client:
            job = client.post("/v1/jobs", json={"classes": ["a", "b"], "webhook_url": receiver.url}).json()
            client.post(f"/v1/jobs/{job['id']}/cancel")  # a queued job cancelled: job.cancelled
            failed = wait_until(lambda: (d := _deliveries(client, job["id"])[0])["status"] == "failed" and d, 30, what="given up")
            assert [a["status_code"] for a in failed["attempts"]] == [500] * FAST["webhook_max_attempts"]
            assert failed["event"] == "job.cancelled" and failed["finished_at"] and failed["next_attempt_at"] is None
            assert len(receiver.requests) == FAST["webhook_max_attempts"]
            # The same webhook-id on every attempt: a receiver deduplicates on it.
            assert len({headers["webhook-id"] for headers, _ in receiver.requests}) == 1
    finally:
        receiver.close()


def test_only_the_events_asked_for_are_delivered(hooked):
    receiver = Receiver()
    try:
        with hooked.client() as client:
            body = {"classes": ["a", "b"], "webhook_url": receiver.url, "webhook_events": ["job.failed"]}
            job = client.post("/v1/jobs", json=body).json()
            _finish(hooked, job["id"])  # succeeded: not asked for
            time.sleep(0.8)
            assert receiver.requests == [] and _deliveries(client, job["id"]) == []
    finally:
        receiver.close()


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"webhook_url": "http://127.0.0.1:9/hook"}, "webhook_target_forbidden"),  # loopback: SSRF
        ({"webhook_url": "http://10.1.2.3/hook"}, "webhook_target_forbidden"),
        ({"webhook_url": "http://[::1]:8000/hook"}, "webhook_target_forbidden"),
        ({"webhook_url": "http://169.254.169.254/latest/meta-data"}, "webhook_target_forbidden"),  # cloud metadata
        ({"webhook_url": "ftp://example.com/hook"}, "invalid_webhook_url"),
        ({"webhook_url": "http://user:pw@example.com/hook"}, "invalid_webhook_url"),
        ({"webhook_url": 42}, "invalid_webhook_url"),
        ({"webhook_events": ["job.failed"]}, "invalid_webhook_url"),
        ({"webhook_url": "http://127.0.0.1:9/hook", "webhook_events": ["job.exploded"]}, "webhook_target_forbidden"),
    ],
)
def test_webhook_targets_and_events_are_checked_before_anything_is_queued(http, fields, code):
    """The module's default service: private targets refused (the operator has not allowed them)."""
    before = len(http.get("/v1/jobs", params={"limit": 100}).json()["data"])
    response = http.post("/v1/jobs", json={"classes": ["a", "b"], **fields})
    assert response.status_code == 422 and response.json()["error"]["code"] == code, response.text
    assert len(http.get("/v1/jobs", params={"limit": 100}).json()["data"]) == before


def test_unknown_webhook_events_are_refused(hooked):
    with hooked.client() as client:
        response = client.post(
            "/v1/jobs", json={"classes": ["a", "b"], "webhook_url": "http://127.0.0.1:9/", "webhook_events": ["job.exploded"]}
        )
        assert response.status_code == 422 and response.json()["error"]["code"] == "unknown_webhook_event"


def test_the_webhook_secret_command_prints_and_rotates_the_signing_secret(hooked):
    import subprocess
    import sys

    from tests.servers import REPO, service_env

    data_dir = hooked.app.state.settings.data_dir

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "cli.main", "keys", "webhook-secret", "--data-dir", str(data_dir), *args]
        return subprocess.run(command, cwd=REPO, env=service_env(data_dir), capture_output=True, text=True, timeout=60)

    with session_scope(hooked.app.state.session_factory) as session:
        current = signing_secret(session, None)
    assert cli().stdout == current + "\n"
    rotated = cli("--rotate").stdout.strip()
    assert rotated.startswith("whsec_") and rotated != current and cli().stdout.strip() == rotated
    missing = cli("--tenant", "nobody-here")
    assert missing.returncode == 2 and "tenant_not_found" in missing.stderr
