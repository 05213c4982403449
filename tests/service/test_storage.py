"""Local storage: atomic writes with recorded sha256, no leftovers on failure, safe keys."""

from __future__ import annotations

import hashlib
import os

import pytest

from service.storage import LocalStorage, StorageError


def test_put_records_size_and_sha256_and_reads_back(tmp_path):
    storage = LocalStorage(tmp_path)
    data = os.urandom(3 * 1024 * 1024 + 7)
    stored = storage.put("artifacts/job_1/student.onnx", data)
    assert stored.size == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert storage.read(stored.key) == data and storage.size(stored.key) == len(data)
    assert b"".join(storage.iter_chunks(stored.key, 1024 * 1024)) == data
    for start, end in [(0, 1), (1024 * 1024 - 1, 2 * 1024 * 1024 + 5), (len(data) - 3, None), (5, 5)]:
        assert b"".join(storage.iter_chunks(stored.key, 1024 * 1024, start=start, end=end)) == data[start:end]
    assert [p.name for p in (tmp_path / "artifacts" / "job_1").iterdir()] == ["student.onnx"]  # no temporary files left


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


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../outside", "a/../../b", "a//b", "./a"])
def test_keys_cannot_escape_the_root(tmp_path, key):
    with pytest.raises(StorageError):
        LocalStorage(tmp_path).put(key, b"x")


def test_delete_prefix_and_readiness_check(tmp_path):
    storage = LocalStorage(tmp_path / "root")
    storage.put("uploads/job_1/u1", b"1")
    storage.put("uploads/job_2/u1", b"2")
    storage.delete_prefix("uploads/job_1")
    assert not storage.exists("uploads/job_1/u1") and storage.exists("uploads/job_2/u1")
    storage.check()
    assert not (tmp_path / "root" / ".probe").exists()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StorageError):
        LocalStorage(tmp_path / "file" / "root").check()
