"""Image pools over HTTP against the real app under uvicorn: create (files or a zip, duplicates stored once), list,
show, the thumbnail grid, delete; every hostile input with its own code and nothing left behind; another tenant's
pool is 404 from every endpoint; a pool a queued job uses cannot be deleted (409)."""

from __future__ import annotations

import io
import zipfile

import pytest
from PIL import Image

from service import pools as repo
from service.db import session_scope
from service.models import Job
from tests.api.conftest import LIMITS, png_bytes
from tests.servers import ApiThread, settings_for

POOL_LIMITS = {**LIMITS, "max_pool_images": 6, "max_archive_uncompressed_bytes": 200_000}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with ApiThread(settings_for(tmp_path_factory.mktemp("pools"), **POOL_LIMITS)) as server:
        yield server


@pytest.fixture
def http(api):
    with api.client() as client:
        yield client


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _files(api) -> set[str]:
    root = api.app.state.settings.data_dir / "storage" / "pools"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def test_create_from_files_and_a_zip_then_list_show_thumbnails_and_delete(http, api):
    red, blue, green = png_bytes(color="red"), png_bytes(color="blue"), png_bytes((20, 12), color="green")
    parts = [("images", ("a.png", red, "image/png")), ("images", ("b.png", blue, "image/png")), ("images", ("c.png", red, "image/png"))]
    parts += [("archive", ("more.zip", _zip({"x/y/g.png": green, "__MACOSX/._g.png": b"junk"}), "application/zip"))]
    created = http.post("/v1/pools", files=parts, data={"name": "my shop"})
    assert created.status_code == 201, created.text
    pool = created.json()
    assert created.headers["location"] == f"/v1/pools/{pool['id']}" and pool["id"].startswith("pool_")
    assert (pool["name"], pool["image_count"], pool["duplicates"], pool["jobs_using"]) == ("my shop", 3, 1, [])
    assert pool["bytes"] == len(red) + len(blue) + len(green)
    assert http.get(f"/v1/pools/{pool['id']}").json() == pool
    assert pool["id"] in [p["id"] for p in http.get("/v1/pools").json()["data"]]
    grid = http.get(pool["thumbnails_url"])
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(grid.content)).size == (repo.THUMBNAIL_COLUMNS * repo.THUMBNAIL_SIDE, repo.THUMBNAIL_SIDE)
    assert any(name.startswith(pool["id"]) for name in _files(api))
    assert http.delete(f"/v1/pools/{pool['id']}").status_code == 204
    assert http.get(f"/v1/pools/{pool['id']}").json()["error"]["code"] == "pool_not_found"
    assert not any(name.startswith(pool["id"]) for name in _files(api))


@pytest.mark.parametrize(
    ("parts", "status", "code"),
    [
        ([], 422, "no_images"),
        ([("images", ("x.png", b"not an image", "image/png"))], 422, "invalid_image"),
        ([("images", ("x.ico", png_bytes(fmt="ICO"), "image/png"))], 415, "unsupported_image_type"),
        ([("images", (f"{i}.png", png_bytes(color=(i, 0, 0)), "image/png")) for i in range(POOL_LIMITS["max_pool_images"] + 1)], 413,
         "too_many_images"),
        ([("photos", ("x.png", png_bytes(), "image/png"))], 422, "unexpected_field"),
        ([("archive", ("a.zip", b"PK not a zip", "application/zip"))], 400, "invalid_archive"),
        ([("archive", ("a.zip", _zip({"../escape.png": png_bytes()}), "application/zip"))], 422, "unsafe_archive_path"),
        ([("archive", ("a.zip", _zip({"bomb.png": b"\0" * 150_000}), "application/zip"))], 413, "archive_too_large"),
        ([("images", ("big.png", png_bytes((600, 600)), "image/png"))], 422, "decompression_bomb"),
    ],
)  # fmt: skip
def test_hostile_input_is_refused_with_its_code_and_leaves_nothing(http, api, parts, status, code):
    before = (_files(api), len(http.get("/v1/pools").json()["data"]))
    response = http.post("/v1/pools", files=parts or [("name", (None, "x"))])
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert (_files(api), len(http.get("/v1/pools").json()["data"])) == before


def test_a_json_body_and_a_long_name_are_refused(http):
    assert http.post("/v1/pools", json={"images": []}).json()["error"]["code"] == "unsupported_media_type"
    response = http.post("/v1/pools", files=[("images", ("a.png", png_bytes(), "image/png"))], data={"name": "n" * 201})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_name"


def test_a_pool_a_queued_job_uses_cannot_be_deleted(http, api):
    pool = http.post("/v1/pools", files=[("images", ("a.png", png_bytes(), "image/png"))]).json()
    job = http.post("/v1/jobs", json={"classes": ["circle", "square"], "synthesis": {"pool": pool["id"]}}).json()
    assert job["spec"]["synthesis"]["pool"] == pool["id"]
    with session_scope(api.app.state.session_factory) as session:
        assert session.get_one(Job, job["id"]).pool_id == pool["id"]
    assert http.get(f"/v1/pools/{pool['id']}").json()["jobs_using"] == [job["id"]]
    refused = http.delete(f"/v1/pools/{pool['id']}")
    error = refused.json()["error"]
    assert refused.status_code == 409 and error["code"] == "pool_in_use" and job["id"] in error["message"]
    assert http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200  # a queued job is cancelled at once
    assert http.delete(f"/v1/pools/{pool['id']}").status_code == 204


def test_a_job_naming_a_pool_that_is_not_there_is_refused(http):
    missing = http.post("/v1/jobs", json={"classes": ["circle", "square"], "synthesis": {"pool": "pool_" + "0" * 26}})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "pool_not_found"
    malformed = http.post("/v1/jobs", json={"classes": ["circle", "square"], "synthesis": {"pool": "../etc"}})
    assert malformed.status_code == 422 and malformed.json()["error"]["code"] == "invalid_spec"


def test_a_pool_created_with_an_unknown_teacher_or_bad_views_is_refused_and_leaves_nothing(http, api):
    before = (_files(api), len(http.get("/v1/pools").json()["data"]))
    image = [("images", ("a.png", png_bytes(), "image/png"))]
    for fields, code in (({"teacher": "no-such-teacher"}, "unknown_teacher"), ({"teacher": "shapes-mini", "views": "17"}, "invalid_views"),
                         ({"teacher": "shapes-mini", "views": "four"}, "invalid_views"), ({"views": "2"}, "invalid_views")):  # fmt: skip
        response = http.post("/v1/pools", files=image, data=fields)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == code, fields
    unknown = http.post("/v1/pools", files=image, data={"teacher": "no-such-teacher"}).json()["error"]
    assert "shapes-mini" in unknown["details"]["known"]
    assert (_files(api), len(http.get("/v1/pools").json()["data"])) == before


def test_a_pool_created_with_a_teacher_queues_its_embedding_which_keeps_the_pool_until_it_ends(http, api):
    from service import pool_embeddings
    from service.models import PoolEmbedding

    parts = [("images", (f"{i}.png", png_bytes(color=(i * 60, 0, 0)), "image/png")) for i in range(3)]
    created = http.post("/v1/pools", files=parts, data={"teacher": "shapes-mini", "views": "2"})
    assert created.status_code == 201, created.text
    pool = created.json()
    [embedding] = pool["embeddings"]
    assert (embedding["teacher"], embedding["views"], embedding["status"], embedding["attempts"]) == ("shapes-mini", 2, "queued", 0)
    assert embedding["id"].startswith("pemb_") and embedding["result"] is None and embedding["error"] is None
    assert http.get(f"/v1/pools/{pool['id']}").json()["embeddings"] == [embedding]
    assert [p["embeddings"] for p in http.get("/v1/pools").json()["data"] if p["id"] == pool["id"]] == [[embedding]]
    factory = api.app.state.session_factory
    with session_scope(factory) as session:
        assert session.get_one(PoolEmbedding, embedding["id"]).publish_due_at is None  # published after the commit
    refused = http.delete(f"/v1/pools/{pool['id']}")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "pool_in_use"
    assert refused.json()["error"]["details"]["embeddings"] == [embedding["id"]]
    with session_scope(factory) as session:  # a worker builds it (tests/worker/test_pool_embedding.py does it for real)
        assert pool_embeddings.claim(session, embedding["id"], "test-worker", 30, 3) is not None
    result = {"status": "built", "key": "0123456789abcdef", "images": 3, "views": 2, "encoder": "torch", "seconds": 0.2,
              "encoder_choice": {"backend": "torch"}}  # fmt: skip
    with session_scope(factory) as session:
        assert pool_embeddings.finish(session, embedding["id"], "test-worker", pool_embeddings.SUCCEEDED, result=result)
    [done] = http.get(f"/v1/pools/{pool['id']}").json()["embeddings"]
    assert done["status"] == "succeeded" and done["result"] == {**result, "reason": None} and done["finished_at"] is not None
    assert http.delete(f"/v1/pools/{pool['id']}").status_code == 204
    with session_scope(factory) as session:
        assert session.get(PoolEmbedding, embedding["id"]) is None
    # The contract: typed embeddings in the OpenAPI document, and the form's fields.
    document = http.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert "embeddings" in schemas["Pool"]["required"] and schemas["PoolEmbedding"]["properties"]["result"]
    form = document["paths"]["/v1/pools"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert form["views"]["maximum"] == 16 and "teacher" in form
