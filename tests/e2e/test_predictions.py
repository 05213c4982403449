"""Predictions over HTTP: a succeeded job's student answers at once in the API process (onnxruntime, no torch), the same
top classes as the runtime run here; hostile inputs each get their own code; a tenant's rate is bounded."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import numpy as np
import pytest
from PIL import Image

from clipforge_runtime import Student
from tests.e2e.test_evaluations import CLASSES, finished_job, write_pngs  # noqa: F401 (a fixture)
from tests.servers import TINY_SPEC


def _files(paths):
    return [("images", (p.name, p.read_bytes(), "image/png")) for p in paths]


def test_predictions_answer_at_once_with_the_runtimes_top_classes(served, finished_job, tmp_path):  # noqa: F811
    client, _, _ = served
    job, onnx_bytes = finished_job
    paths = [p for name in CLASSES for p in write_pngs(tmp_path / "png", per_class=2)[name]]
    with httpx.Client(base_url=client.url, timeout=60) as http:
        response = http.post(f"/v1/jobs/{job.id}/predictions", params={"top_k": 2}, files=_files(paths))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["classes"] == CLASSES and [p["filename"] for p in body["predictions"]] == [p.name for p in paths]
        local = Student(onnx_bytes).predict(paths, top_k=2, unknown=True)  # the service answers "unknown" where calibrated
        for served_one, here in zip(body["predictions"], local, strict=True):
            assert served_one["label"] == here.label and [t["name"] for t in served_one["top"]] == [c for c, _ in here.top]
            assert served_one["unknown"] == here.unknown  # the verdict at the card's threshold (None: no calibration)
            assert [t["probability"] for t in served_one["top"]] == pytest.approx([p for _, p in here.top], abs=1e-5)
        # One zip of images works as files do; a second request reuses the loaded student.
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as z:
            for p in paths[:3]:
                z.writestr(f"any/{p.parent.name}/{p.name}", p.read_bytes())
        zipped = http.post(f"/v1/jobs/{job.id}/predictions", files=[("archive", ("a.zip", archive.getvalue(), "application/zip"))])
        assert zipped.status_code == 200 and [p["label"] for p in zipped.json()["predictions"]] == [p.label for p in local[:3]]


def _png(width=8, height=8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")  # 400 M pixels in a few kilobytes
    return buffer.getvalue()


def test_hostile_predictions_get_their_own_codes(served, finished_job):  # noqa: F811
    client, _, _ = served
    job, _ = finished_job
    unfinished = client.submit({**TINY_SPEC, "classes": ["circle", "square"], "export": {"formats": ["torchscript"]}})
    cases = [
        (job.id, [("images", (f"{i}.png", _png(), "image/png")) for i in range(17)], 413, "too_many_images"),
        (job.id, [("images", ("bomb.png", _bomb(), "image/png"))], 422, "decompression_bomb"),
        (job.id, [("images", ("notes.png", b"not an image at all", "image/png"))], 422, "invalid_image"),
        (job.id, [("other", ("x.png", _png(), "image/png"))], 422, "unexpected_field"),
        ("job_00000000000000000000000000", [("images", ("x.png", _png(), "image/png"))], 404, "job_not_found"),
    ]
    with httpx.Client(base_url=client.url, timeout=60) as http:
        for job_id, files, status, code in cases:
            response = http.post(f"/v1/jobs/{job_id}/predictions", files=files)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text
        archive = io.BytesIO()
        zipfile.ZipFile(archive, "w").close()
        empty = http.post(f"/v1/jobs/{job.id}/predictions", files=[("archive", ("empty.zip", archive.getvalue(), "application/zip"))])
        assert (empty.status_code, empty.json()["error"]["code"]) == (422, "no_images"), empty.text
        not_multipart = http.post(f"/v1/jobs/{job.id}/predictions", json={"images": []})
        assert (not_multipart.status_code, not_multipart.json()["error"]["code"]) == (415, "unsupported_media_type")
        # A job without student.onnx: refused once it succeeded (409 no_onnx_student), or while it runs (409 job_not_succeeded).
        done = client.wait(unfinished.id, timeout=240)
        assert done.status == "succeeded", done.error
        no_onnx = http.post(f"/v1/jobs/{unfinished.id}/predictions", files=[("images", ("x.png", _png(), "image/png"))])
        assert (no_onnx.status_code, no_onnx.json()["error"]["code"]) == (409, "no_onnx_student")
        bad_k = http.post(f"/v1/jobs/{job.id}/predictions", params={"top_k": 0}, files=[("images", ("x.png", _png(), "image/png"))])
        assert bad_k.status_code == 422


def test_a_tenants_prediction_rate_is_bounded():
    from api.predictions import PredictionRate
    from service.errors import ServiceError

    now = [1000.0]
    rate = PredictionRate(per_minute=10, clock=lambda: now[0])
    rate.take("acme", 6)
    rate.take("globex", 10)  # tenants apart
    with pytest.raises(ServiceError) as refused:
        rate.take("acme", 5)
    assert refused.value.code == "rate_limited" and refused.value.http_status == 429 and refused.value.headers["Retry-After"] == "60"
    now[0] += 61  # the minute has passed
    rate.take("acme", 10)
    assert json.dumps(refused.value.details)


def test_a_tenant_past_its_prediction_rate_gets_429_with_retry_after_over_http(served, finished_job):  # noqa: F811
    """Last in the module: it spends the open tenant's minute of predictions."""
    client, _, _ = served
    job, _ = finished_job
    batch = [("images", (f"{i}.png", _png(), "image/png")) for i in range(16)]
    accepted = 0
    with httpx.Client(base_url=client.url, timeout=60) as http:
        for _ in range(200):
            response = http.post(f"/v1/jobs/{job.id}/predictions", files=batch)
            if response.status_code != 200:
                break
            accepted += 16
        error = response.json()["error"]
        assert (response.status_code, error["code"]) == (429, "rate_limited"), response.text
        limit, used = error["details"]["limit"], error["details"]["used"]
        assert used >= accepted and used <= limit < used + 16 and 1 <= int(response.headers["Retry-After"]) <= 60
        if limit > used:  # what is left of the minute is still served, and not one image more
            rest = http.post(f"/v1/jobs/{job.id}/predictions", files=batch[: limit - used])
            assert rest.status_code == 200 and len(rest.json()["predictions"]) == limit - used
        one_more = http.post(f"/v1/jobs/{job.id}/predictions", files=batch[:1])
        assert (one_more.status_code, one_more.json()["error"]["code"]) == (429, "rate_limited")
