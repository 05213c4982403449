"""Artifact downloads a client can resume and inspect: HEAD, single byte ranges (206), If-Range; job-list cursors."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.api.conftest import finished_job_with_artifact

DATA = os.urandom(300_000)  # several storage chunks


@pytest.fixture(scope="module")
def artifact_url(api):
    with api.client() as client:
        job_id = finished_job_with_artifact(api, client, "student.onnx", DATA)
    return f"/v1/jobs/{job_id}/artifacts/student.onnx"


def test_head_answers_the_headers_without_the_body(http, artifact_url):
    response = http.head(artifact_url)
    assert response.status_code == 200 and response.content == b""
    assert response.headers["content-length"] == str(len(DATA)) and response.headers["accept-ranges"] == "bytes"
    assert response.headers["x-checksum-sha256"] == hashlib.sha256(DATA).hexdigest()


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=10-19", 10, 20), ("bytes=299990-", 299_990, 300_000), ("bytes=-7", 299_993, 300_000), ("bytes=100-999999", 100, 300_000)],
)
def test_a_single_range_answers_206_with_that_part(http, artifact_url, header, start, end):
    response = http.get(artifact_url, headers={"Range": header})
    assert response.status_code == 206 and response.content == DATA[start:end]
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{len(DATA)}"
    assert response.headers["content-length"] == str(end - start)
    head = http.head(artifact_url, headers={"Range": header})
    assert head.status_code == 206 and head.headers["content-range"] == response.headers["content-range"]


def test_resuming_a_download_gives_the_whole_file(http, artifact_url):
    first = http.get(artifact_url, headers={"Range": "bytes=0-99999"}).content
    etag = http.head(artifact_url).headers["etag"]
    rest = http.get(artifact_url, headers={"Range": f"bytes={len(first)}-", "If-Range": etag}).content
    assert first + rest == DATA


def test_a_range_outside_the_file_is_416_and_a_stale_if_range_gets_the_whole_file(http, artifact_url):
    response = http.get(artifact_url, headers={"Range": "bytes=300000-"})
    assert response.status_code == 416 and response.json()["error"]["code"] == "range_not_satisfiable"
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"
    stale = http.get(artifact_url, headers={"Range": "bytes=0-9", "If-Range": '"an-older-version"'})
    assert stale.status_code == 200 and stale.content == DATA
    several = http.get(artifact_url, headers={"Range": "bytes=0-9,20-29"})  # multi-range: served whole
    assert several.status_code == 200 and several.content == DATA


def test_a_job_list_cursor_that_is_no_job_id_is_400_invalid_cursor(http):
    for cursor in ("garbage", "job_", "job_" + "!" * 26):
        response = http.get("/v1/jobs", params={"after": cursor})
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_cursor"
    assert http.get("/v1/jobs", params={"after": "job_" + "0" * 26}).status_code == 200
