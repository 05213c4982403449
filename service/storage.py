"""Blob storage for uploads and artifacts behind a small interface; a local directory by default, any S3-compatible
object store with ``CLIPFORGE_STORAGE_URL=s3://bucket/prefix`` (service.object_storage).

Writes are atomic (locally: temporary file in the same folder, fsync, rename, fsync of the folder; in a store: one
PUT), so a reader sees a whole object or none, and every write reports the sha256 it recorded.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from service.settings import Settings

CHUNK_BYTES = 1024 * 1024
OBJECT_STORAGE_SCHEME = "s3"  # CLIPFORGE_STORAGE_URL=s3://bucket/prefix


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str


class StorageError(RuntimeError):
    code = "storage_error"


class StorageFull(StorageError):
    """No space (or quota) left for the object: nothing was written."""

    code = "storage_full"


class StorageUnavailable(StorageError):
    """The storage cannot be written or reached (a read-only, gone or failing folder; an unreachable store, a missing
    bucket, refused credentials): nothing was written."""

    code = "storage_unavailable"


_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def classify_os_error(exc: OSError, what: str) -> StorageError:
    """A coded StorageError for an OSError of the storage folder, so that jobs and requests fail with a clear code."""
    kind = StorageFull if exc.errno in _FULL_ERRNOS else StorageUnavailable
    return kind(f"{what}: {exc.strerror or exc}")


class Storage(Protocol):
    def put(self, key: str, data: bytes) -> StoredObject: ...
    def read(self, key: str) -> bytes: ...
    def iter_chunks(self, key: str, chunk_bytes: int = CHUNK_BYTES, *, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def check(self) -> None: ...
    def download_url(self, key: str, *, filename: str, content_type: str, expires_seconds: int) -> str | None: ...


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_key(key: str) -> list[str]:
    """The parts of a valid key (a relative POSIX path, no ``..``, ``.`` or empty part); StorageError otherwise."""
    parts = key.split("/")
    if not key or any(p in ("..", ".", "") for p in parts) or "\\" in key or "\x00" in key:
        raise StorageError(f"invalid storage key {key!r}")
    return parts


def parse_storage_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as (bucket, prefix); the prefix, which may be empty, is a key like any other."""
    parsed = urlsplit(url)
    if parsed.scheme != OBJECT_STORAGE_SCHEME or not parsed.netloc or parsed.query or parsed.fragment:
        raise ValueError(f"a storage URL is {OBJECT_STORAGE_SCHEME}://bucket or {OBJECT_STORAGE_SCHEME}://bucket/prefix, not {url!r}")
    prefix = parsed.path.strip("/")
    if prefix:
        try:
            check_key(prefix)
        except StorageError as exc:
            raise ValueError(f"the storage URL {url!r} has an invalid prefix: {exc}") from None
    return parsed.netloc, prefix


class LocalStorage:
    """Objects as files under ``root``; keys are relative POSIX paths."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key))

    def put(self, key: str, data: bytes) -> StoredObject:
        """Write ``data`` whole or not at all; an OSError becomes StorageFull or StorageUnavailable, with no temp file left."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:
            raise classify_os_error(exc, f"cannot write {key!r} under {self.root}") from exc
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise classify_os_error(exc, f"cannot write {key!r} ({len(data)} bytes) under {self.root}") from exc
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredObject(key, len(data), sha256_hex(data))

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def iter_chunks(self, key: str, chunk_bytes: int = CHUNK_BYTES, *, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The object's bytes ``start`` to ``end`` (exclusive; None: to its end), in chunks."""
        with self._path(key).open("rb") as handle:
            handle.seek(start)
            left = None if end is None else end - start
            while left is None or left > 0:
                chunk = handle.read(chunk_bytes if left is None else min(chunk_bytes, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under ``prefix`` (a folder-like key)."""
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def check(self) -> None:
        """Readiness: the root is writable (an atomic probe write and its removal)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.put(".probe/ready", b"ok")
            self.delete_prefix(".probe")
        except OSError as exc:
            raise classify_os_error(exc, f"storage at {self.root} is not writable") from exc

    def download_url(self, key: str, *, filename: str, content_type: str, expires_seconds: int) -> str | None:
        """None: a folder has no URL of its own, the API streams the file."""
        return None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_storage(settings: Settings) -> Storage:
    """The object store of ``storage_url`` when set, else the local folder ``storage_root``."""
    if settings.uses_object_storage:
        from service.object_storage import S3Storage  # boto3 only where a store is used

        return S3Storage.from_settings(settings)
    return LocalStorage(settings.storage_root)


def upload_key(job_id: str, upload_id: str) -> str:
    return f"uploads/{job_id}/{upload_id}"


def artifact_key(job_id: str, name: str) -> str:
    return f"artifacts/{job_id}/{name}"


def checkpoints_prefix(job_id: str) -> str:
    """A running job's checkpoints (core.checkpoints), under its artifact prefix: internal files, never artifact rows."""
    return f"artifacts/{job_id}/checkpoints"


def checkpoint_key(job_id: str, name: str) -> str:
    return f"{checkpoints_prefix(job_id)}/{name}"


def job_prefixes(job_id: str) -> tuple[str, str]:
    return f"uploads/{job_id}", f"artifacts/{job_id}"
