"""Artifact downloads a client can resume and inspect: HEAD, single byte ranges (206), If-Range; job-list cursors.
Each on the local folder and on an S3-compatible store (streamed through the API), and presigned downloads: a GET
redirected to the store, HEAD and Range still answered by the API."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from client import ApiError, ClipforgeClient
from tests.api.conftest import finished_job_with_artifact
from tests.servers import ApiThread, ThrowawayS3, settings_for

DATA = os.urandom(300_000)  # several storage chunks


@contextmanager
def api_on_s3(store: ThrowawayS3, data_dir: Path, **settings: object) -> Iterator[ApiThread]:
    """The API with its storage in ``store``: the AWS variables set while it runs, as an operator sets them."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in store.env().items():
            patch.setenv(name, value)
        with ApiThread(settings_for(data_dir, storage_url=store.storage_url(data_dir.name), **settings)) as server:
            yield server


@pytest.fixture(scope="module", params=["local", "s3"])
def api(request, tmp_path_factory):
    """This module's API: the local folder, or an S3-compatible store streamed through the API (the default)."""
    data_dir = tmp_path_factory.mktemp("downloads")
    if request.param == "local":
        with ApiThread(settings_for(data_dir)) as server:
            yield server
        return
    with api_on_s3(request.getfixturevalue("s3_server"), data_dir) as server:
        yield server


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


# ---- presigned downloads: a GET answered with a redirect to the store


@pytest.fixture(scope="module")
def presigned(s3_server, tmp_path_factory):
    """An API on the store with presigned downloads on, and the URL of an artifact of a finished job."""
    with api_on_s3(s3_server, tmp_path_factory.mktemp("presigned"), storage_presigned_downloads=True) as server:
        with server.client() as client:
            job_id = finished_job_with_artifact(server, client, "student.onnx", DATA)
        yield server, f"/v1/jobs/{job_id}/artifacts/student.onnx"


def test_a_get_redirects_to_a_presigned_url_of_the_store(presigned, s3_server):
    server, url = presigned
    with server.client() as http:
        response = http.get(url)
    assert response.status_code == 307 and response.content == b""
    location = response.headers["location"]
    assert location.startswith(f"{s3_server.endpoint_url}/{s3_server.bucket}/") and "X-Amz-Signature=" in location
    assert response.headers["x-checksum-sha256"] == hashlib.sha256(DATA).hexdigest()
    assert response.headers["etag"] == f'"{hashlib.sha256(DATA).hexdigest()}"' and response.headers["cache-control"] == "no-store"
    fetched = httpx.get(location)  # no API key, no AWS credentials: the URL's signature is the permission
    assert fetched.status_code == 200 and fetched.content == DATA
    assert fetched.headers["content-disposition"] == 'attachment; filename="student.onnx"'


def test_head_range_and_if_none_match_stay_with_the_api(presigned):
    server, url = presigned
    with server.client() as http:
        head = http.head(url)
        assert head.status_code == 200 and head.headers["content-length"] == str(len(DATA)) and "location" not in head.headers
        part = http.get(url, headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == DATA[10:20]
        etag = head.headers["etag"]
        assert http.get(url, headers={"If-None-Match": etag}).status_code == 304
        # ?stream=true (the web console, whose CSP allows no other host): the bytes from the API, no redirect.
        streamed = http.get(url, params={"stream": "true"})
        assert streamed.status_code == 200 and streamed.content == DATA and "location" not in streamed.headers


def test_the_client_follows_the_redirect_and_checks_the_sha256(presigned, s3_server, tmp_path):
    server, url = presigned
    job_id = url.split("/")[3]
    with ClipforgeClient(server.url) as client:
        path = client.download(job_id, "student.onnx", tmp_path)
        assert path.read_bytes() == DATA
        # The store's copy altered behind the API's back (same length): the client refuses it and keeps no file.
        key = f"{server.app.state.storage.prefix}/artifacts/{job_id}/student.onnx"
        s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=bytes(reversed(DATA)))
        with pytest.raises(ApiError) as refused:
            client.download(job_id, "student.onnx", tmp_path / "again.onnx")
        assert refused.value.code == "checksum_mismatch" and not (tmp_path / "again.onnx").exists()
        s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=DATA)


def test_presigned_downloads_on_the_local_folder_stream_through_the_api(tmp_path):
    with ApiThread(settings_for(tmp_path, storage_presigned_downloads=True)) as server, server.client() as http:
        job_id = finished_job_with_artifact(server, http, "student.onnx", DATA)
        response = http.get(f"/v1/jobs/{job_id}/artifacts/student.onnx")
    assert response.status_code == 200 and response.content == DATA
