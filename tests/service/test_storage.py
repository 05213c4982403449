"""Storage, on the local folder and on an S3-compatible store (moto's server): atomic writes with recorded sha256, no
leftovers on failure, safe keys, prefixes removed whole, readiness, and coded errors when the store is unreachable."""

from __future__ import annotations

import base64
import hashlib
import os
import time
import uuid
from pathlib import Path

import httpx
import pytest

from service import object_storage
from service.object_storage import S3Storage, s3_client
from service.settings import Settings
from service.storage import LocalStorage, StorageError, StorageUnavailable, create_storage
from tests.servers import ThrowawayS3, free_port

BACKENDS = ["local", "s3"]
UNREACHABLE_WITHIN_S = 5  # connection refused, one retry: a store that is down answers in about a second


@pytest.fixture
def aws_env(s3_server: ThrowawayS3, monkeypatch):
    """The AWS variables that point boto3 at the test store, as an operator sets them for the service."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


def s3_storage(store: ThrowawayS3, tmp_path: Path) -> S3Storage:
    """Storage built as the service builds it (create_storage from the settings), under a prefix of its own."""
    settings = Settings(_env_file=None, data_dir=tmp_path, storage_url=store.storage_url(f"test-{uuid.uuid4().hex[:8]}"))  # type: ignore[call-arg]
    storage = create_storage(settings)
    assert isinstance(storage, S3Storage)
    return storage


@pytest.fixture(params=BACKENDS)
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "root")
    return s3_storage(request.getfixturevalue("aws_env"), tmp_path)


def stored_keys(storage: LocalStorage | S3Storage, s3_server: ThrowawayS3 | None = None) -> list[str]:
    """Every object (or file, temporary ones included) the storage holds, as keys."""
    if isinstance(storage, LocalStorage):
        return sorted(p.relative_to(storage.root).as_posix() for p in storage.root.rglob("*") if p.is_file())
    assert s3_server is not None
    return [key.removeprefix(f"{storage.prefix}/") for key in s3_server.keys(f"{storage.prefix}/")]


def server_of(storage: LocalStorage | S3Storage, request: pytest.FixtureRequest) -> ThrowawayS3 | None:
    return request.getfixturevalue("s3_server") if isinstance(storage, S3Storage) else None


def unreachable(storage: S3Storage) -> S3Storage:
    """The same bucket and prefix through an endpoint where nothing listens."""
    return S3Storage(storage.bucket, storage.prefix, client=s3_client(f"http://127.0.0.1:{free_port()}"))


def test_put_records_size_and_sha256_and_reads_back(storage, request):
    data = os.urandom(3 * 1024 * 1024 + 7)
    stored = storage.put("artifacts/job_1/student.onnx", data)
    assert stored.size == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert storage.read(stored.key) == data and storage.size(stored.key) == len(data)
    assert b"".join(storage.iter_chunks(stored.key, 1024 * 1024)) == data
    for start, end in [(0, 1), (1024 * 1024 - 1, 2 * 1024 * 1024 + 5), (len(data) - 3, None), (5, 5), (len(data) + 1, None)]:
        assert b"".join(storage.iter_chunks(stored.key, 1024 * 1024, start=start, end=end)) == data[start:end]
    assert stored_keys(storage, server_of(storage, request)) == ["artifacts/job_1/student.onnx"]  # no temporary files left
    empty = storage.put("artifacts/job_1/empty", b"")
    assert storage.read(empty.key) == b"" and b"".join(storage.iter_chunks(empty.key)) == b"" and storage.size(empty.key) == 0
    assert not storage.exists("artifacts/job_1/missing")
    with pytest.raises(FileNotFoundError):
        storage.read("artifacts/job_1/missing")


def test_a_failed_write_leaves_neither_the_object_nor_a_temporary_file(tmp_path, monkeypatch):
    storage = LocalStorage(tmp_path)
    storage.put("a/b", b"old")

    def broken_replace(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match="disk full"):  # an OSError, classified (tests/faults: a real full disk)
        storage.put("a/b", b"new content")
    monkeypatch.undo()
    assert storage.read("a/b") == b"old"  # the old object is intact, whole
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]


def test_a_write_to_an_unreachable_store_fails_in_seconds_and_leaves_the_old_object(aws_env, tmp_path):
    storage = s3_storage(aws_env, tmp_path)
    storage.put("a/b", b"old")
    began = time.monotonic()
    with pytest.raises(StorageUnavailable, match="cannot write 'a/b'"):
        unreachable(storage).put("a/b", b"new content")
    assert time.monotonic() - began < UNREACHABLE_WITHIN_S
    assert storage.read("a/b") == b"old" and stored_keys(storage, aws_env) == ["a/b"]


def test_the_put_carries_the_sha256_for_the_store_to_verify(aws_env, tmp_path):
    """The store checks the object against the SHA-256 sent with it, and keeps it: its own record of it is ours."""
    storage = s3_storage(aws_env, tmp_path)
    data = os.urandom(100_000)
    stored = storage.put("uploads/job_1/u1", data)
    head = aws_env.client().head_object(Bucket=storage.bucket, Key=f"{storage.prefix}/uploads/job_1/u1", ChecksumMode="ENABLED")
    assert base64.b64decode(head["ChecksumSHA256"]).hex() == stored.sha256 == hashlib.sha256(data).hexdigest()
    assert head["ContentLength"] == len(data)


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../outside", "a/../../b", "a//b", "./a"])
def test_keys_cannot_escape_the_root(storage, key):
    with pytest.raises(StorageError):
        storage.put(key, b"x")


def test_delete_prefix_and_readiness_check(storage, request, tmp_path):
    storage.put("uploads/job_1/u1", b"1")
    storage.put("uploads/job_2/u1", b"2")
    storage.put("uploads/job_10/u1", b"10")  # a longer id with the same start: not under uploads/job_1
    storage.delete_prefix("uploads/job_1")
    assert not storage.exists("uploads/job_1/u1") and storage.exists("uploads/job_2/u1") and storage.exists("uploads/job_10/u1")
    storage.delete_prefix("uploads/job_404")  # nothing there: nothing to do
    storage.check()
    assert stored_keys(storage, server_of(storage, request)) == ["uploads/job_10/u1", "uploads/job_2/u1"]  # no probe left
    if isinstance(storage, LocalStorage):
        (tmp_path / "file").write_text("not a folder")
        broken = LocalStorage(tmp_path / "file" / "root")
    else:
        broken = S3Storage(f"{storage.bucket}-missing", storage.prefix)
    with pytest.raises(StorageError):
        broken.check()


def test_delete_prefix_removes_every_page_of_objects(aws_env, tmp_path, monkeypatch):
    monkeypatch.setattr(object_storage, "DELETE_BATCH", 2)  # five objects: three list pages and three batch deletes
    storage = s3_storage(aws_env, tmp_path)
    for index in range(5):
        storage.put(f"artifacts/job_1/file{index}", b"x")
    storage.put("artifacts/job_2/kept", b"y")
    storage.delete_prefix("artifacts/job_1")
    assert stored_keys(storage, aws_env) == ["artifacts/job_2/kept"]


def test_objects_live_under_the_urls_prefix_with_the_local_keys(aws_env, tmp_path):
    first, second = s3_storage(aws_env, tmp_path), s3_storage(aws_env, tmp_path)
    first.put("artifacts/job_1/metrics.json", b"{}")
    assert aws_env.keys(f"{first.prefix}/") == [f"{first.prefix}/artifacts/job_1/metrics.json"]
    assert not second.exists("artifacts/job_1/metrics.json")  # another prefix: another service's objects
    second.delete_prefix("artifacts/job_1")
    assert first.exists("artifacts/job_1/metrics.json")


def test_an_unreachable_store_raises_storage_unavailable_within_seconds(aws_env, tmp_path):
    storage = unreachable(s3_storage(aws_env, tmp_path))
    operations = {
        "put": lambda: storage.put("a/b", b"x"),
        "read": lambda: storage.read("a/b"),
        "iter_chunks": lambda: storage.iter_chunks("a/b", start=1),
        "size": lambda: storage.size("a/b"),
        "exists": lambda: storage.exists("a/b"),
        "check": storage.check,
    }
    for name, operation in operations.items():
        began = time.monotonic()
        with pytest.raises(StorageUnavailable) as raised:
            operation()
        assert raised.value.code == "storage_unavailable", name
        assert time.monotonic() - began < UNREACHABLE_WITHIN_S, name
    storage.delete_prefix("a")  # best effort on the way out of a failure: logged, not raised


def test_download_urls_are_presigned_gets_of_the_store(storage):
    stored = storage.put("artifacts/job_1/model_card.json", b'{"classes": []}')
    url = storage.download_url(stored.key, filename="model_card.json", content_type="application/json", expires_seconds=60)
    if isinstance(storage, LocalStorage):
        assert url is None  # a folder has no URL: the API streams the file
        return
    answer = httpx.get(url)  # no credentials: the signature in the URL is the permission
    assert answer.status_code == 200 and answer.content == b'{"classes": []}'
    assert answer.headers["content-disposition"] == 'attachment; filename="model_card.json"'
    assert answer.headers["content-type"] == "application/json"


def test_create_storage_chooses_the_backend_from_the_settings(tmp_path, aws_env):
    local = create_storage(Settings(_env_file=None, data_dir=tmp_path))  # type: ignore[call-arg]
    assert isinstance(local, LocalStorage) and local.root == tmp_path.resolve() / "storage"
    remote = create_storage(Settings(_env_file=None, data_dir=tmp_path, storage_url=f"s3://{aws_env.bucket}/a/b/"))  # type: ignore[call-arg]
    assert isinstance(remote, S3Storage) and (remote.bucket, remote.prefix) == (aws_env.bucket, "a/b")
    assert remote.client.meta.endpoint_url == aws_env.endpoint_url  # from AWS_ENDPOINT_URL, which boto3 read itself
