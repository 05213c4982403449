from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from service import jobs as repo
from service.db import session_scope
from service.storage import artifact_key
from tests.servers import ApiThread, settings_for

# Small limits, so that every one of them can be hit cheaply.
LIMITS = {
    "max_classes": 6,
    "max_class_text_chars": 50,
    "max_images_per_class": 2,
    "max_image_bytes": 64 * 1024,
    "max_request_bytes": 512 * 1024,
    "max_json_bytes": 16 * 1024,
    "max_image_pixels": 512 * 512,
}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """The real app under uvicorn; no worker consumes its queue here, so jobs stay queued."""
    with ApiThread(settings_for(tmp_path_factory.mktemp("api"), **LIMITS)) as server:
        yield server


@pytest.fixture
def http(api):
    with api.client() as client:
        yield client


def png_bytes(size: tuple[int, int] = (16, 16), color: str = "red", mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def finished_job_with_artifact(
    server: ApiThread, client: httpx.Client, name: str = "metrics.json", data: bytes = b'{"accuracy": 1}'
) -> str:
    """A job of the client's tenant, run to success by a real (in-test) lease holder, with one artifact on disk."""
    job = client.post(
        "/v1/jobs", files=[("spec", (None, '{"classes": ["p", "q"]}')), ("images[p]", ("p.png", png_bytes(), "image/png"))]
    ).json()
    stored = server.app.state.storage.put(artifact_key(job["id"], name), data)
    with session_scope(server.app.state.session_factory) as session:
        assert repo.claim(session, job["id"], "test-worker", lease_seconds=60, max_attempts=3) is not None
    with session_scope(server.app.state.session_factory) as session:
        assert repo.finish(session, job["id"], "test-worker", repo.SUCCEEDED, artifacts=[(name, "application/octet-stream", stored)])
    return job["id"]
