"""The jobs resource over real HTTP: creation with defaults, idempotency, pages, cancel, delete, events, artifacts."""

from __future__ import annotations

import uuid

from tests.api.conftest import png_bytes


def _assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code and body["error"]["message"]
    return body["error"]


def test_simplest_body_gets_every_default_and_a_stored_random_seed(http):
    response = http.post("/v1/jobs", json={"classes": ["cat", "dog"]})
    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["progress"] == 0 and job["stage"] is None
    assert job["teacher"] == "shapes-mini" and job["spec"]["teacher"] == "shapes-mini"
    assert job["spec"]["budget"] == "auto" and job["spec"]["student"]["arch"] is None  # the worker's device decides
    assert job["spec"]["classes"] == [{"name": "cat", "text": None, "images": []}, {"name": "dog", "text": None, "images": []}]
    assert 0 <= job["seed"] < 2**31 and job["spec"]["seed"] == job["seed"]
    assert job["created_at"] and job["started_at"] is None and job["finished_at"] is None
    assert http.get(response.headers["location"]).json() == job
    seeds = {http.post("/v1/jobs", json={"classes": ["cat", "dog"]}).json()["seed"] for _ in range(3)}
    assert len(seeds) > 1  # chosen per job


def test_a_given_seed_is_kept(http):
    job = http.post("/v1/jobs", json={"classes": ["a", "b"], "seed": 42, "student": {"arch": "tiny_cnn"}}).json()
    assert job["seed"] == 42 and job["spec"]["student"]["arch"] == "tiny_cnn"


def test_idempotency_key_replays_the_same_job_and_rejects_another_body(http):
    key = str(uuid.uuid4())
    first = http.post("/v1/jobs", json={"classes": ["x", "y"]}, headers={"Idempotency-Key": key})
    again = http.post("/v1/jobs", json={"classes": ["x", "y"]}, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"] and again.json()["seed"] == first.json()["seed"]
    assert again.headers["idempotent-replayed"] == "true" and again.headers["location"] == first.headers["location"]
    error = _assert_error(
        http.post("/v1/jobs", json={"classes": ["x", "z"]}, headers={"Idempotency-Key": key}), 409, "idempotency_key_reused"
    )
    assert error["details"]["job_id"] == first.json()["id"]
    # The key also covers multipart bodies, image bytes included.
    key2 = str(uuid.uuid4())
    files = {"spec": (None, '{"classes": ["p", "q"]}')}
    one = http.post(
        "/v1/jobs", files=[*files.items(), ("images[p]", ("p.png", png_bytes(), "image/png"))], headers={"Idempotency-Key": key2}
    )
    two = http.post(
        "/v1/jobs", files=[*files.items(), ("images[p]", ("p.png", png_bytes(), "image/png"))], headers={"Idempotency-Key": key2}
    )
    assert one.status_code == 201 and two.json()["id"] == one.json()["id"]
    other = http.post("/v1/jobs", files=[*files.items(), ("images[p]", ("p.png", png_bytes(color="blue"), "image/png"))],
                      headers={"Idempotency-Key": key2})  # fmt: skip
    _assert_error(other, 409, "idempotency_key_reused")


def test_cursor_pages_and_status_filter(http):
    created = [http.post("/v1/jobs", json={"classes": ["m", "n"], "seed": i}).json()["id"] for i in range(5)]
    http.post(f"/v1/jobs/{created[0]}/cancel")
    seen, after = [], None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = http.get("/v1/jobs", params=params).json()
        assert len(page["data"]) <= 2
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            assert page["next_after"] is None
            break
        after = page["next_after"]
    assert len(seen) == len(set(seen)) and seen[:5] == list(reversed(created))
    cancelled = http.get("/v1/jobs", params={"status": "cancelled", "limit": 100}).json()["data"]
    assert created[0] in [j["id"] for j in cancelled] and all(j["status"] == "cancelled" for j in cancelled)
    _assert_error(http.get("/v1/jobs", params={"status": "sleeping"}), 422, "invalid_request")
    _assert_error(http.get("/v1/jobs", params={"limit": 1000}), 422, "invalid_request")


def test_cancel_is_idempotent_and_delete_removes_the_job(http, api):
    job = http.post(
        "/v1/jobs", files=[("spec", (None, '{"classes": ["p", "q"]}')), ("images[q]", ("q.png", png_bytes(), "image/png"))]
    ).json()
    uploads = api.app.state.settings.storage_root / "uploads" / job["id"]
    assert len(list(uploads.iterdir())) == 1
    for _ in range(2):
        cancelled = http.post(f"/v1/jobs/{job['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"]
    events = http.get(f"/v1/jobs/{job['id']}/events").json()
    assert [e["status"] for e in events["data"]] == ["queued", "cancelled"] and not events["has_more"]
    assert http.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert not uploads.exists()
    _assert_error(http.get(f"/v1/jobs/{job['id']}"), 404, "job_not_found")
    _assert_error(http.delete(f"/v1/jobs/{job['id']}"), 404, "job_not_found")
    _assert_error(http.post(f"/v1/jobs/{job['id']}/cancel"), 404, "job_not_found")


def test_events_pages(http):
    job_id = http.post("/v1/jobs", json={"classes": ["e", "f"]}).json()["id"]
    http.post(f"/v1/jobs/{job_id}/cancel")
    first = http.get(f"/v1/jobs/{job_id}/events", params={"limit": 1}).json()
    assert len(first["data"]) == 1 and first["has_more"]
    rest = http.get(f"/v1/jobs/{job_id}/events", params={"after": first["next_after"]}).json()
    assert [e["kind"] for e in rest["data"]] == ["status"] and not rest["has_more"]
    assert http.get(f"/v1/jobs/{job_id}/events", params={"after": rest["next_after"]}).json()["data"] == []
    _assert_error(http.get("/v1/jobs/job_nope/events"), 404, "job_not_found")


def test_artifacts_of_a_job_without_any(http):
    job_id = http.post("/v1/jobs", json={"classes": ["g", "h"]}).json()["id"]
    assert http.get(f"/v1/jobs/{job_id}/artifacts").json() == {"data": []}
    _assert_error(http.get(f"/v1/jobs/{job_id}/artifacts/student.onnx"), 404, "artifact_not_found")


def test_framework_errors_share_the_error_shape(http):
    _assert_error(http.get("/nowhere"), 404, "not_found")
    _assert_error(http.put("/v1/jobs"), 405, "method_not_allowed")
    _assert_error(http.get("/v1/jobs/x/events", params={"after": "soon"}), 422, "invalid_request")
    _assert_error(http.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}), 400, "invalid_json")
    _assert_error(http.post("/v1/jobs", content=b"classes=a", headers={"content-type": "text/plain"}), 415, "unsupported_media_type")
    _assert_error(
        http.post("/v1/jobs", json={"classes": ["a", "b"]}, headers={"Idempotency-Key": "k" * 201}), 400, "invalid_idempotency_key"
    )


def test_unhandled_exceptions_answer_500_in_the_error_shape(tmp_path):
    from tests.servers import ApiThread, settings_for

    with ApiThread(settings_for(tmp_path)) as server:

        @server.app.get("/boom")
        def boom() -> None:
            raise RuntimeError("secret internals")

        with server.client() as client:
            error = _assert_error(client.get("/boom"), 500, "internal_error")
    assert "secret" not in error["message"]


def test_teachers_and_students(http):
    teachers = {t["name"]: t for t in http.get("/v1/teachers").json()["data"]}
    assert {"name": "shapes-mini", "source": "bundled", "image_size": 32, "default": True}.items() <= teachers["shapes-mini"].items()
    assert [name for name, t in teachers.items() if t["default"]] == ["shapes-mini"]  # one default: the service's setting
    students = [s["name"] for s in http.get("/v1/students").json()["data"]]
    assert students == ["resnet18", "mobilenet_v3_small", "tiny_cnn", "small_cnn"]
