"""Every validation limit is checked before anything is queued, each with its own code (limits from tests/api/conftest.py)."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from tests.api.conftest import LIMITS, png_bytes


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def _multipart(http, spec: dict | str | None, images: list[tuple[str, str, bytes]]):
    parts = [] if spec is None else [("spec", (None, spec if isinstance(spec, str) else json.dumps(spec)))]
    parts += [(field, (name, content, "application/octet-stream")) for field, name, content in images]
    return http.post("/v1/jobs", files=parts)


def _job_count(http) -> int:
    return len(http.get("/v1/jobs", params={"limit": 100}).json()["data"])


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "classes_missing"),
        ({"classes": "cat,dog"}, "invalid_spec"),
        ({"classes": ["cat"]}, "too_few_classes"),
        ({"classes": [f"c{i}" for i in range(LIMITS["max_classes"] + 1)]}, "too_many_classes"),
        ({"classes": ["cat", "x" * (LIMITS["max_class_text_chars"] + 1)]}, "class_text_too_long"),
        ({"classes": ["cat", {"name": "dog", "text": "y" * (LIMITS["max_class_text_chars"] + 1)}]}, "class_text_too_long"),
        ({"classes": ["Cat", "cat "]}, "duplicate_class"),
        ({"classes": ["cat", {"name": "kitty", "text": "cat"}]}, "duplicate_class"),
        ({"classes": ["cat", "  "]}, "invalid_class_name"),
        ({"classes": ["cat", {"name": "dog", "images": ["/etc/passwd"]}]}, "images_require_upload"),
        ({"classes": ["cat", "dog"], "teacher": "ViT-H-14/nowhere"}, "unknown_teacher"),
        ({"classes": ["cat", "dog"], "student": {"arch": "vgg16"}}, "unknown_student"),
        ({"classes": ["cat", "dog"], "synthesis": {"steps": -1}}, "invalid_spec"),
        ({"classes": ["cat", "dog"], "colour": "red"}, "unknown_field"),
        ({"classes": ["cat", "dog"], "seed": -1}, "invalid_spec"),
        ([["cat", "dog"]], "invalid_spec"),
    ],
)
def test_json_spec_violations(http, body, code):
    before = _job_count(http)
    error = _error(http.post("/v1/jobs", json=body), 422)
    assert error["code"] == code
    assert _job_count(http) == before  # nothing queued


def test_invalid_spec_details_name_the_field(http):
    error = _error(http.post("/v1/jobs", json={"classes": ["a", "b"], "distillation": {"temperature": -1}}), 422)
    assert error["details"][0]["loc"] == ["distillation", "temperature"]


@pytest.mark.parametrize(
    ("body", "codes"),
    [
        ({"classes": ["x"], "bogus": 1}, ["too_few_classes", "unknown_field"]),
        (
            {"classes": ["a", "A"], "teacher": "nope", "student": {"arch": "vgg16"}, "synthesis": {"steps": -1}, "colour": 1},
            ["duplicate_class", "unknown_teacher", "unknown_student", "invalid_spec", "unknown_field"],
        ),
    ],
)
def test_every_problem_of_a_body_is_in_details_and_the_first_is_the_code(http, body, codes):
    error = _error(http.post("/v1/jobs", json=body), 422)
    assert error["code"] == codes[0] and [d["code"] for d in error["details"]] == codes
    assert all(d["message"] for d in error["details"])


def test_every_problem_of_a_multipart_body_is_in_details(http):
    images = [
        ("images[a]", "cat.png", b"not an image"),
        ("images[zebra]", "z.png", png_bytes()),
        ("images[b]", "cut.png", png_bytes((64, 64))[:-40]),
    ]
    error = _error(_multipart(http, {"classes": ["a", "b"], "bogus": True}, images), 422)
    assert [d["code"] for d in error["details"]] == ["invalid_image", "images_for_unknown_class", "invalid_image", "unknown_field"]


def test_image_errors_read_as_sentences_without_python_reprs(http):
    for content in (b"not an image", png_bytes((64, 64))[:-40], b""):
        message = _error(_multipart(http, {"classes": ["a", "b"]}, [("images[a]", "cat.png", content)]), 422)["message"]
        assert "cat.png" in message and " at 0x" not in message and "<" not in message and "BytesIO" not in message, message


def test_json_body_too_large(http):
    body = json.dumps({"classes": ["a", "b"], "styles": ["s" * 90] * 200}).encode()
    assert len(body) > LIMITS["max_json_bytes"]
    response = http.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert _error(response, 413)["code"] == "request_too_large"


def test_multipart_with_images_stores_uploads_and_names_them_in_the_spec(http, api):
    response = _multipart(http, {"classes": ["donut", {"name": "square", "text": "a square"}]},
                          [("images[donut]", "d1.png", png_bytes()), ("images[donut]", "d2.jpg", png_bytes(fmt="JPEG"))])  # fmt: skip
    assert response.status_code == 201, response.text
    job = response.json()
    donut, square = job["spec"]["classes"]
    assert len(donut["images"]) == 2 and all(i.startswith("upl_") for i in donut["images"]) and square["images"] == []
    stored = sorted(p.name for p in (api.app.state.settings.storage_root / "uploads" / job["id"]).iterdir())
    assert stored == sorted(donut["images"])


def _bomb() -> bytes:
    # 1-bit pixels compress to almost nothing: a small file that decodes to many pixels.
    buffer = io.BytesIO()
    Image.new("1", (1024, 1024)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("spec", "images", "status", "code"),
    [
        (None, [("images[a]", "a.png", png_bytes())], 422, "spec_missing"),
        ("{broken", [], 400, "invalid_json"),
        ({"classes": ["a", "b"]}, [("images[c]", "c.png", png_bytes())], 422, "images_for_unknown_class"),
        ({"classes": ["a", "b"]}, [("photo", "a.png", png_bytes())], 422, "unexpected_field"),
        ({"classes": ["a", "b"]}, [("images[a]", f"{i}.png", png_bytes()) for i in range(LIMITS["max_images_per_class"] + 1)], 422,
         "too_many_images"),
        ({"classes": ["a", "b"]}, [("images[a]", "big.bmp", png_bytes((200, 200), fmt="BMP"))], 413, "upload_too_large"),
        ({"classes": ["a", "b"]}, [("images[a]", "cat.png", b"this is not an image at all")], 422, "invalid_image"),
        ({"classes": ["a", "b"]}, [("images[a]", "cut.png", png_bytes((64, 64))[:-40])], 422, "invalid_image"),
        ({"classes": ["a", "b"]}, [("images[a]", "empty.png", b"")], 422, "invalid_image"),
        ({"classes": ["a", "b"]}, [("images[a]", "a.png", png_bytes(fmt="PPM"))], 415, "unsupported_image_type"),
        ({"classes": ["a", "b"]}, [("images[a]", "bomb.png", _bomb())], 422, "decompression_bomb"),
        ({"classes": ["a", "a"]}, [("images[a]", "a.png", png_bytes())], 422, "duplicate_class"),
        ({"classes": ["a", "b"], "teacher": "nope"}, [("images[a]", "a.png", png_bytes())], 422, "unknown_teacher"),
    ],
)  # fmt: skip
def test_multipart_violations(http, api, spec, images, status, code):
    before = _job_count(http)
    uploads = api.app.state.settings.storage_root / "uploads"
    files_before = sorted(uploads.rglob("*")) if uploads.exists() else []
    error = _error(_multipart(http, spec, images), status)
    assert error["code"] == code, error
    assert _job_count(http) == before
    assert (sorted(uploads.rglob("*")) if uploads.exists() else []) == files_before  # no upload kept


def test_image_type_comes_from_decoding_not_the_file_name(http):
    # A JPEG named .png and a PNG named .txt are both accepted for what they are.
    response = _multipart(
        http, {"classes": ["a", "b"]}, [("images[a]", "x.png", png_bytes(fmt="JPEG")), ("images[b]", "y.txt", png_bytes())]
    )
    assert response.status_code == 201, response.text


def test_upload_larger_than_the_request_limit(http):
    big = b"\0" * (LIMITS["max_request_bytes"] + 1)
    error = _error(_multipart(http, {"classes": ["a", "b"]}, [("images[a]", "a.png", big)]), 413)
    assert error["code"] == "upload_too_large"
