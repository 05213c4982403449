"""Every hostile input we know of, over real HTTP (uvicorn on a free port): each answers its own 4xx code in the error
shape, and nothing is queued (no job row, no broker message) or written (no upload file).

Images are decoded, never trusted by name; CMYK and 16-bit images are converted, not rejected (the last tests here).
"""

from __future__ import annotations

import http.client
import io
import json
import sqlite3
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from service.db import session_scope
from service.models import Job, Upload
from tests.api.conftest import png_bytes
from tests.servers import ApiThread, settings_for

# The defaults where a hostile input must meet the real limit (10,000 classes, 100 KB texts); small image limits, so
# that bombs stay cheap to build.
HOSTILE_LIMITS = {"max_image_pixels": 512 * 512, "max_image_side": 4096, "max_image_bytes": 256 * 1024}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ApiThread]:
    with ApiThread(settings_for(tmp_path_factory.mktemp("hostile"), **HOSTILE_LIMITS)) as api:
        yield api


@pytest.fixture(scope="module")
def queued_job(server) -> str:
    """A job to aim artifact paths at (queued: no worker runs here)."""
    with server.client() as client:
        return client.post("/v1/jobs", json={"classes": ["a", "b"]}).json()["id"]


# ------------------------------------------------------------------------------------------
# Hostile bodies
# ------------------------------------------------------------------------------------------


def _image(fmt: str, size: tuple[int, int] = (16, 16), mode: str = "RGB", frames: int = 1, **save: object) -> bytes:
    buffer = io.BytesIO()
    first = Image.new(mode, size, (0, 255, 255, 0) if mode == "CMYK" else "red")  # CMYK red; a colour name would not be
    extra = [Image.new(mode, size, colour) for colour in ("blue", "green", "white")[: frames - 1]]
    first.save(buffer, format=fmt, **({"save_all": True, "append_images": extra} if extra else {}), **save)
    return buffer.getvalue()


def _forged_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and whose data is a few bytes: the sizes must be refused unread."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _bomb() -> bytes:
    # 1-bit pixels compress to almost nothing: a small file that decodes to many pixels (over max_image_pixels).
    return _image("PNG", (2048, 2048), mode="1")


def _spec_part(spec: object) -> tuple[str, tuple[None, str]]:
    return ("spec", (None, spec if isinstance(spec, str) else json.dumps(spec)))


def _with_image(name: str, content: bytes, spec: object = None) -> Callable[[httpx.Client, str], httpx.Response]:
    spec = spec if spec is not None else {"classes": ["a", "b"]}
    return lambda client, _: client.post("/v1/jobs", files=[_spec_part(spec), ("images[a]", (name, content, "image/png"))])


def _json(body: object) -> Callable[[httpx.Client, str], httpx.Response]:
    return lambda client, _: client.post("/v1/jobs", json=body)


def _raw(content: bytes, content_type: str) -> Callable[[httpx.Client, str], httpx.Response]:
    return lambda client, _: client.post("/v1/jobs", content=content, headers={"content-type": content_type})


BOUNDARY = "hostileboundary"
TRUNCATED_MULTIPART = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n{{"classes": ["a", "b"]}}\r\n'
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images[a]"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
).encode() + png_bytes()[:20]  # cut off inside the file, with no closing boundary
PART_WITHOUT_HEADERS = f"--{BOUNDARY}\r\n\r\nno content-disposition\r\n--{BOUNDARY}--\r\n".encode()


@dataclass(frozen=True)
class Hostile:
    name: str
    send: Callable[[httpx.Client, str], httpx.Response]  # (client, a queued job's id) -> response
    status: int
    code: str


def _artifact_path(raw: str) -> Callable[[httpx.Client, str], httpx.Response]:
    """GET a raw, unnormalised path (httpx would resolve ../ itself): an artifact name that tries to leave its folder."""

    def send(client: httpx.Client, job_id: str) -> httpx.Response:
        url = httpx.URL(str(client.base_url))
        connection = http.client.HTTPConnection(url.host, url.port, timeout=30)
        try:
            connection.request("GET", f"/v1/jobs/{job_id}/artifacts/{raw}")
            answer = connection.getresponse()
            return httpx.Response(answer.status, headers=answer.getheaders(), content=answer.read())
        finally:
            connection.close()

    return send


CLASSES = ["a", "b"]
HOSTILE = [
    # JSON bodies
    Hostile("malformed JSON", _raw(b'{"classes": ["a", ', "application/json"), 400, "invalid_json"),
    Hostile("JSON not UTF-8", _raw(b'{"classes": ["\xff\xfe"]}', "application/json"), 400, "invalid_json"),
    Hostile("JSON not an object", _json([["a", "b"]]), 422, "invalid_spec"),
    Hostile("JSON over the size limit", _json({"classes": CLASSES, "styles": ["s" * 1000] * 300}), 413, "request_too_large"),
    Hostile("10,000 classes", _json({"classes": [f"class {i}" for i in range(10_000)]}), 422, "too_many_classes"),
    Hostile("empty class name", _json({"classes": ["a", ""]}), 422, "invalid_class_name"),
    Hostile("whitespace class name", _json({"classes": ["a", " \t\u3000 "]}), 422, "invalid_class_name"),
    Hostile("class name not a string", _json({"classes": ["a", {"name": 7}]}), 422, "invalid_class_name"),
    Hostile("duplicate after NFKC", _json({"classes": ["\uff23\uff41\uff54", "cat"]}), 422, "duplicate_class"),
    Hostile("duplicate after case and whitespace", _json({"classes": ["Red  Circle", " red circle "]}), 422, "duplicate_class"),
    Hostile("NUL in a class name", _json({"classes": ["a", "b\x00c"]}), 422, "control_character"),
    Hostile("escape sequence in a class text", _json({"classes": ["a", {"name": "b", "text": "\x1b[31mred"}]}), 422, "control_character"),
    Hostile("newline inside a class name", _json({"classes": ["a", "b\nc"]}), 422, "control_character"),
    Hostile("100 KB class text", _json({"classes": ["a", {"name": "b", "text": "x" * 100_000}]}), 422, "class_text_too_long"),
    Hostile("unknown top-level field", _json({"classes": CLASSES, "priority": 9}), 422, "unknown_field"),
    Hostile("unknown nested field", _json({"classes": CLASSES, "synthesis": {"stepz": 3}}), 422, "unknown_field"),
    Hostile("unknown class field", _json({"classes": ["a", {"name": "b", "colour": "red"}]}), 422, "unknown_field"),
    Hostile("server path as an image", _json({"classes": ["a", {"name": "b", "images": ["/etc/passwd"]}]}), 422, "images_require_upload"),
    Hostile("unsupported media type", _raw(b"classes=a,b", "text/plain"), 415, "unsupported_media_type"),
    # Images (multipart)
    Hostile("text with an image name", _with_image("cat.png", b"GIF89a but not really an image"), 422, "invalid_image"),
    Hostile("HTML with an image name", _with_image("cat.jpg", b"<html><script>alert(1)</script></html>"), 422, "invalid_image"),
    Hostile("empty image file", _with_image("empty.png", b""), 422, "invalid_image"),
    Hostile("truncated PNG", _with_image("cut.png", png_bytes((64, 64))[:-40]), 422, "invalid_image"),
    Hostile("truncated JPEG", _with_image("cut.jpg", _image("JPEG", (64, 64))[:300]), 422, "invalid_image"),
    Hostile("decompression bomb", _with_image("bomb.png", _bomb()), 422, "decompression_bomb"),
    Hostile("huge dimensions, few pixels", _with_image("strip.png", _image("PNG", (1, 5000), mode="1")), 422, "image_dimensions_too_large"),
    Hostile("forged 9000x9000 header", _with_image("forged.png", _forged_png_header(9000, 9000)), 422, "image_dimensions_too_large"),
    # Pillow itself refuses sizes over twice its own pixel limit when it opens the file, before any side can be read.
    Hostile("forged 100000x100000 header", _with_image("forged.png", _forged_png_header(100_000, 100_000)), 422, "decompression_bomb"),
    Hostile("animated GIF", _with_image("anim.gif", _image("GIF", frames=3)), 422, "animated_image"),
    Hostile("animated PNG", _with_image("anim.png", _image("PNG", frames=2)), 422, "animated_image"),
    Hostile("animated WebP", _with_image("anim.webp", _image("WEBP", frames=2)), 422, "animated_image"),
    Hostile("multi-page TIFF", _with_image("pages.tif", _image("TIFF", frames=2)), 422, "animated_image"),
    Hostile("unsupported image format", _with_image("a.png", _image("PPM")), 415, "unsupported_image_type"),
    Hostile("image over the byte limit", _with_image("big.bmp", b"BM" + b"\0" * (256 * 1024)), 413, "upload_too_large"),
    # Multipart structure
    Hostile("multipart without the spec part", lambda c, _: c.post("/v1/jobs", files=[("images[a]", ("a.png", png_bytes()))]), 422,
            "spec_missing"),
    Hostile("multipart with a malformed spec", lambda c, _: c.post("/v1/jobs", files=[_spec_part("{broken")]), 400, "invalid_json"),
    Hostile("multipart cut off mid-file", _raw(TRUNCATED_MULTIPART, f"multipart/form-data; boundary={BOUNDARY}"), 400,
            "invalid_multipart"),
    Hostile("multipart part without headers", _raw(PART_WITHOUT_HEADERS, f"multipart/form-data; boundary={BOUNDARY}"), 400,
            "invalid_multipart"),
    Hostile("multipart without a boundary", _raw(b"--x\r\n\r\n", "multipart/form-data"), 400, "invalid_multipart"),
    Hostile("unexpected form field", lambda c, _: c.post("/v1/jobs", files=[_spec_part({"classes": CLASSES}), ("photo", (None, "x"))]),
            422, "unexpected_field"),
    Hostile("images for a class not in the spec", lambda c, _: c.post(
        "/v1/jobs", files=[_spec_part({"classes": CLASSES}), ("images[../../etc]", ("a.png", png_bytes()))]), 422,
        "images_for_unknown_class"),
    # Artifact names that try to leave the job's folder
    Hostile("artifact ../", _artifact_path("../../../etc/passwd"), 400, "invalid_artifact_name"),
    Hostile("artifact encoded %2e%2e%2f", _artifact_path("%2e%2e%2f%2e%2e%2fetc%2fpasswd"), 400, "invalid_artifact_name"),
    Hostile("artifact encoded %2e%2e", _artifact_path("%2e%2e"), 400, "invalid_artifact_name"),
    Hostile("artifact absolute path", _artifact_path("/etc/passwd"), 400, "invalid_artifact_name"),
    Hostile("artifact backslashes", _artifact_path("..%5c..%5cstorage.db"), 400, "invalid_artifact_name"),
    Hostile("artifact NUL byte", _artifact_path("student.onnx%00.png"), 400, "invalid_artifact_name"),
]  # fmt: skip


def _queued_messages(settings_dir: Path) -> int:
    """Messages in the embedded broker (kombu's SQLAlchemy transport); 0 before its tables exist."""
    try:
        with sqlite3.connect(settings_dir / "broker.db") as connection:
            return int(connection.execute("SELECT count(*) FROM kombu_message").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def _state(server: ApiThread) -> tuple[int, int, int, list[Path]]:
    settings = server.app.state.settings
    with session_scope(server.app.state.session_factory) as session:
        jobs = session.scalar(select(func.count()).select_from(Job)) or 0
        uploads = session.scalar(select(func.count()).select_from(Upload)) or 0
    files = sorted(p for p in settings.storage_root.rglob("*") if p.is_file())
    return jobs, uploads, _queued_messages(Path(settings.data_dir)), files


@pytest.mark.parametrize("case", HOSTILE, ids=[case.name for case in HOSTILE])
def test_hostile_input_is_refused_with_its_code_and_leaves_nothing(server, queued_job, case):
    before = _state(server)
    with server.client() as client:
        response = case.send(client, queued_job)
    assert response.status_code == case.status, response.text[:500]
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == case.code, body
    assert _state(server) == before  # no job row, no upload row, no broker message, no file


def test_every_hostile_code_is_distinct_where_the_cause_is():
    # One code per cause: the table above does not collapse distinct causes into a catch-all.
    codes = {case.code for case in HOSTILE}
    assert {"invalid_image", "decompression_bomb", "image_dimensions_too_large", "animated_image", "control_character",
            "unknown_field", "invalid_multipart", "invalid_artifact_name", "duplicate_class"} <= codes  # fmt: skip


# ------------------------------------------------------------------------------------------
# Awkward but decodable images are converted, not rejected
# ------------------------------------------------------------------------------------------


def _stored_upload(server: ApiThread, job: dict) -> Image.Image:
    upload_id = job["spec"]["classes"][0]["images"][0]
    path = server.app.state.settings.storage_root / "uploads" / job["id"] / upload_id
    return Image.open(io.BytesIO(path.read_bytes()))


@pytest.mark.parametrize(
    ("name", "content", "expected_rgb"),
    [
        ("cmyk.jpg", _image("JPEG", mode="CMYK"), (255, 0, 0)),
        ("cmyk.tif", _image("TIFF", mode="CMYK"), (255, 0, 0)),
        ("deep.png", None, (156, 156, 156)),  # 16-bit grey 40000 / 65535 scales to 156, where clipping would give 255
        ("deep.tif", None, (156, 156, 156)),
    ],
)
def test_cmyk_and_16_bit_images_are_stored_as_8_bit_rgb(server, name, content, expected_rgb):
    if content is None:
        buffer = io.BytesIO()
        Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(buffer, format="TIFF" if name.endswith(".tif") else "PNG")
        content = buffer.getvalue()
    assert Image.open(io.BytesIO(content)).mode in ("CMYK", "I;16")
    with server.client() as client:
        response = client.post("/v1/jobs", files=[_spec_part({"classes": CLASSES}), ("images[a]", (name, content, "image/png"))])
        assert response.status_code == 201, response.text
        job = response.json()
        client.post(f"/v1/jobs/{job['id']}/cancel")
    stored = _stored_upload(server, job)
    assert stored.format == "PNG" and stored.mode == "RGB"
    assert np.abs(np.asarray(stored, dtype=int)[0, 0] - np.array(expected_rgb)).max() <= 3
