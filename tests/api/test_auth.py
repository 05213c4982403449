"""API keys and tenants over real HTTP: 401s, tenant isolation (404 in every endpoint), quotas (429), the keys CLI,
and the start-up rule (open on loopback only while no key exists)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from service.auth import AuthSetupError, check_exposure, create_key, revoke_key
from service.db import session_scope
from service.models import ApiKey, Job
from tests.api.conftest import finished_job_with_artifact, png_bytes
from tests.servers import REPO, ApiThread, service_env, settings_for


def _assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    return body["error"]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ApiThread]:
    with ApiThread(settings_for(tmp_path_factory.mktemp("auth"), max_active_jobs_per_tenant=3, quota_retry_after_seconds=17)) as api:
        yield api


def _new_key(server: ApiThread, tenant: str) -> tuple[str, str]:
    with session_scope(server.app.state.session_factory) as session:
        return create_key(session, tenant)


def _client(server: ApiThread, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url, timeout=30, headers=headers)


@pytest.fixture(scope="module")
def tenants(server) -> dict[str, str]:
    """Two tenants' keys, created after one job was submitted while the service still ran open."""
    with _client(server, None) as anonymous:
        response = anonymous.post("/v1/jobs", json={"classes": ["open", "mode"]})
        assert response.status_code == 201, response.text
    keys = {"open_job": response.json()["id"]}
    for tenant in ("acme", "globex"):
        keys[tenant] = _new_key(server, tenant)[1]
    return keys


def test_missing_and_invalid_keys_answer_401_with_a_bearer_challenge(server, tenants):
    with _client(server, None) as anonymous:
        for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/teachers"), ("GET", "/v1/students")]:
            response = anonymous.request(method, path, json={"classes": ["a", "b"]} if method == "POST" else None)
            _assert_error(response, 401, "missing_api_key")
            assert response.headers["www-authenticate"].startswith("Bearer")
        # Health and the schema stay open: probes and clients need them without a key.
        assert anonymous.get("/healthz").status_code == 200 and anonymous.get("/openapi.json").status_code == 200
    key_id = tenants["acme"].split(".")[1]
    for bad in ["nonsense", f"cfk.{key_id}.wrong-secret", tenants["acme"] + "x", "cfk.key_unknown.secret"]:
        with _client(server, bad) as client:
            response = client.get("/v1/jobs")
            _assert_error(response, 401, "invalid_api_key")
            assert response.headers["www-authenticate"].startswith("Bearer")
    with httpx.Client(base_url=server.url) as client:
        _assert_error(client.get("/v1/jobs", headers={"Authorization": f"Basic {tenants['acme']}"}), 401, "missing_api_key")


def test_keys_are_stored_as_sha256_only(server, tenants):
    key = tenants["acme"]
    with session_scope(server.app.state.session_factory) as session:
        row = session.get(ApiKey, key.split(".")[1])
        assert row is not None and row.secret_hash == hashlib.sha256(key.encode()).hexdigest()
    database = Path(server.app.state.settings.database_url.removeprefix("sqlite:///"))
    secret = key.split(".")[2].encode()
    for path in database.parent.glob(database.name + "*"):  # the WAL too
        assert secret not in path.read_bytes()


def test_another_tenants_job_is_not_found_anywhere(server, tenants):
    with _client(server, tenants["acme"]) as acme, _client(server, tenants["globex"]) as globex:
        job_id = finished_job_with_artifact(server, acme)
        assert acme.get(f"/v1/jobs/{job_id}/artifacts/metrics.json").content == b'{"accuracy": 1}'
        assert [a["name"] for a in acme.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]] == ["metrics.json"]
        for method, path in [
            ("GET", f"/v1/jobs/{job_id}"),
            ("GET", f"/v1/jobs/{job_id}/events"),
            ("GET", f"/v1/jobs/{job_id}/artifacts"),
            ("GET", f"/v1/jobs/{job_id}/artifacts/metrics.json"),
            ("POST", f"/v1/jobs/{job_id}/cancel"),
            ("DELETE", f"/v1/jobs/{job_id}"),
            ("GET", f"/v1/jobs/{job_id}/evaluations"),
            ("GET", f"/v1/jobs/{job_id}/evaluations/eval_00000000000000000000000000"),
            ("GET", f"/v1/jobs/{job_id}/evaluations/eval_00000000000000000000000000/artifacts/confusion.png"),
            ("DELETE", f"/v1/jobs/{job_id}/evaluations/eval_00000000000000000000000000"),
        ]:
            _assert_error(globex.request(method, path), 404, "job_not_found")
        # An evaluation of another tenant's job is refused before its body is read.
        refused = globex.post(f"/v1/jobs/{job_id}/evaluations", files=[("images[p]", ("p.png", png_bytes(), "image/png"))])
        _assert_error(refused, 404, "job_not_found")
        predicted = globex.post(f"/v1/jobs/{job_id}/predictions", files=[("images", ("p.png", png_bytes(), "image/png"))])
        _assert_error(predicted, 404, "job_not_found")  # and predictions of it, likewise
        for client in (acme, globex):  # the open-mode job belongs to no tenant
            _assert_error(client.get(f"/v1/jobs/{tenants['open_job']}"), 404, "job_not_found")
        acme_ids = {j["id"] for j in acme.get("/v1/jobs", params={"limit": 100}).json()["data"]}
        globex_ids = {j["id"] for j in globex.get("/v1/jobs", params={"limit": 100}).json()["data"]}
        assert job_id in acme_ids and job_id not in globex_ids and tenants["open_job"] not in acme_ids | globex_ids
        assert acme.delete(f"/v1/jobs/{job_id}").status_code == 204  # the owner still can, after all those tries
    with session_scope(server.app.state.session_factory) as session:
        assert session.get(Job, job_id) is None


def test_another_tenants_pool_is_not_found_anywhere(server, tenants):
    with _client(server, tenants["acme"]) as acme, _client(server, tenants["globex"]) as globex:
        pool = acme.post("/v1/pools", files=[("images", ("p.png", png_bytes(), "image/png"))]).json()
        for method, path in [
            ("GET", f"/v1/pools/{pool['id']}"),
            ("GET", f"/v1/pools/{pool['id']}/thumbnails.png"),
            ("HEAD", f"/v1/pools/{pool['id']}/thumbnails.png"),
            ("DELETE", f"/v1/pools/{pool['id']}"),
        ]:
            response = globex.request(method, path)
            if method == "HEAD":
                assert response.status_code == 404
            else:
                _assert_error(response, 404, "pool_not_found")
        assert pool["id"] not in {p["id"] for p in globex.get("/v1/pools").json()["data"]}
        borrowed = globex.post("/v1/jobs", json={"classes": ["a", "b"], "synthesis": {"pool": pool["id"]}})
        _assert_error(borrowed, 404, "pool_not_found")
        assert pool["id"] in {p["id"] for p in acme.get("/v1/pools").json()["data"]}
        assert acme.delete(f"/v1/pools/{pool['id']}").status_code == 204


def test_idempotency_keys_are_per_tenant(server, tenants):
    with _client(server, tenants["acme"]) as acme, _client(server, tenants["globex"]) as globex:
        headers = {"Idempotency-Key": "shared-key"}
        first = acme.post("/v1/jobs", json={"classes": ["x", "y"]}, headers=headers)
        other = globex.post("/v1/jobs", json={"classes": ["x", "z"]}, headers=headers)  # a different body: no 409, no leak
        assert first.status_code == other.status_code == 201, other.text
        assert other.json()["id"] != first.json()["id"] and "idempotent-replayed" not in other.headers
        assert acme.post("/v1/jobs", json={"classes": ["x", "y"]}, headers=headers).json()["id"] == first.json()["id"]
        for client, response in ((acme, first), (globex, other)):
            client.post(f"/v1/jobs/{response.json()['id']}/cancel")


def test_a_revoked_key_stops_working_at_once(server):
    key_id, key = _new_key(server, "initech")
    with _client(server, key) as client:
        assert client.get("/v1/jobs").status_code == 200
        with session_scope(server.app.state.session_factory) as session:
            revoke_key(session, key_id)
        _assert_error(client.get("/v1/jobs"), 401, "invalid_api_key")


def test_quota_of_active_jobs_per_tenant(server, tenants):
    with _client(server, _new_key(server, "quota-a")[1]) as a, _client(server, _new_key(server, "quota-b")[1]) as b:
        ids = [a.post("/v1/jobs", json={"classes": ["m", "n"]}, headers={"Idempotency-Key": f"q{i}"}).json()["id"] for i in range(3)]
        uploads = server.app.state.settings.storage_root / "uploads"
        files_before = sorted(uploads.rglob("*"))
        refused = a.post(
            "/v1/jobs", files=[("spec", (None, '{"classes": ["m", "n"]}')), ("images[m]", ("m.png", png_bytes(), "image/png"))]
        )
        error = _assert_error(refused, 429, "too_many_active_jobs")
        assert refused.headers["retry-after"] == "17" and error["details"] == {"limit": 3, "active": 3}
        assert sorted(uploads.rglob("*")) == files_before and len(a.get("/v1/jobs").json()["data"]) == 3
        # A replay of an accepted job is not a new job: still answered at the limit.
        assert a.post("/v1/jobs", json={"classes": ["m", "n"]}, headers={"Idempotency-Key": "q0"}).json()["id"] == ids[0]
        assert b.post("/v1/jobs", json={"classes": ["m", "n"]}).status_code == 201  # another tenant's quota is its own
        a.post(f"/v1/jobs/{ids[0]}/cancel")
        assert a.post("/v1/jobs", json={"classes": ["m", "n"]}).status_code == 201  # a finished job frees its slot


def _cli(args: list[str], data_dir: Path, **env: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], cwd=REPO, env=service_env(data_dir, **env), capture_output=True, text=True, timeout=120
    )


def test_keys_cli_and_the_start_up_rule(tmp_path):
    # Without any key a non-loopback address is refused before anything starts.
    refused = _cli(["api", "--host", "0.0.0.0", "--port", "1"], tmp_path)
    assert refused.returncode == 2 and "error [api_keys_required]" in refused.stderr and "Traceback" not in refused.stderr
    settings = settings_for(tmp_path, host="0.0.0.0")
    with ApiThread(settings_for(tmp_path)) as api:
        factory = api.app.state.session_factory
        notice = check_exposure(settings_for(tmp_path), factory)
        assert notice is not None and "OPEN" in notice  # loopback without keys: runs open, and says so
        with pytest.raises(AuthSetupError):
            check_exposure(settings, factory)

        created = _cli(["keys", "create", "--tenant", "umbrella"], tmp_path)
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()  # the key alone on stdout (KEY=$(clipforge keys create ...)); the notice on stderr
        assert created.stdout == key + "\n" and key.startswith("cfk.") and "shown only this once" in created.stderr
        key_id = key.split(".")[1]
        assert check_exposure(settings, factory) is None  # a key exists: any address may be bound
        with _client(api, key) as client:
            assert client.get("/v1/jobs").status_code == 200
        with _client(api, None) as anonymous:
            _assert_error(anonymous.get("/v1/jobs"), 401, "missing_api_key")  # the key turned authentication on, live
        listed = _cli(["keys", "list"], tmp_path)
        assert key_id in listed.stdout and "umbrella" in listed.stdout and "active" in listed.stdout
        assert key.split(".")[2] not in listed.stdout
        assert _cli(["keys", "revoke", key_id], tmp_path).returncode == 0
        assert "revoked" in _cli(["keys", "list"], tmp_path).stdout
        with _client(api, key) as client:
            _assert_error(client.get("/v1/jobs"), 401, "invalid_api_key")
        with _client(api, None) as anonymous:
            assert anonymous.get("/v1/jobs").status_code == 200  # no active key left: open again (loopback only)
        with session_scope(factory) as session:
            assert session.scalars(select(ApiKey.id)).all() == [key_id]
    missing = _cli(["keys", "revoke", "key_nope"], tmp_path)
    assert missing.returncode == 2 and "error [key_not_found]" in missing.stderr


def test_open_mode_serves_loopback_clients_only(tmp_path):
    """Without keys the service runs open for loopback clients; a remote client reaching it through a local reverse
    proxy (uvicorn trusts X-Forwarded-For from 127.0.0.1) is asked for a key, over real HTTP."""
    with ApiThread(settings_for(tmp_path)) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        assert client.get("/v1/jobs").status_code == 200
        assert client.get("/v1/jobs", headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 200
        for remote in ("203.0.113.7", "10.1.2.3", "::ffff:198.51.100.4"):
            forwarded = {"X-Forwarded-For": remote}
            _assert_error(client.get("/v1/jobs", headers=forwarded), 401, "missing_api_key")
            _assert_error(client.post("/v1/jobs", json={"classes": ["a", "b"]}, headers=forwarded), 401, "missing_api_key")
        assert client.get("/healthz", headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 200  # health needs no key
