from __future__ import annotations

import io

import pytest
from PIL import Image

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
