"""``S3Storage``: the Storage protocol on any S3-compatible object store (AWS S3, MinIO, Ceph RGW; moto in the tests).

Chosen by ``CLIPFORGE_STORAGE_URL=s3://bucket/prefix``. The endpoint, credentials and region come from the usual AWS
variables (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``), which boto3 reads itself. The guarantees are the local folder's: one PUT is atomic (an object
appears whole or not at all) and carries the object's SHA-256, which the store checks before it keeps the object; every
failure becomes StorageUnavailable or StorageFull, so that requests answer 503 or 507 and jobs fail with a code. Short
timeouts and one retry: an unreachable or hung store fails a request within seconds instead of holding it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from service.storage import CHUNK_BYTES, StorageError, StorageFull, StorageUnavailable, StoredObject, check_key, parse_storage_url

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("clipforge.storage")

S3Client = Any  # boto3's generated client class has no importable type

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 10.0  # per socket read: a store that accepts connections and never answers fails within this
TOTAL_ATTEMPTS = 2  # the first try and one retry (botocore's standard mode: connection errors, throttling, 5xx)
DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys, ListObjectsV2 lists at most 1,000 a page
PROBE_KEY = ".probe/ready"  # readiness writes and removes it, as the local folder's probe
CHECKSUM_ALGORITHM = "SHA256"
# How stores say "no space" or "over quota": MinIO's own codes, S3's quota and size refusals, HTTP 507.
FULL_ERROR_CODES = frozenset({"XMinioStorageFull", "XMinioAdminBucketQuotaExceeded", "QuotaExceeded", "EntityTooLarge"})
INSUFFICIENT_STORAGE = 507
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
RANGE_NOT_SATISFIABLE_CODES = frozenset({"416", "InvalidRange"})


def s3_client(endpoint_url: str | None = None) -> S3Client:
    """A client with short timeouts and one retry. ``endpoint_url`` None: the AWS variables' endpoint (or AWS's own).
    Checksums only where an operation requires one (ours sends its SHA-256 explicitly): botocore's default CRC32 on
    every request is refused by several S3-compatible stores."""
    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"total_max_attempts": TOTAL_ATTEMPTS, "mode": "standard"},
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, config=config)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def classify_s3_error(exc: BotoCoreError | ClientError, what: str) -> StorageError:
    """A coded StorageError for a failed request: StorageFull for a store out of space or quota, else StorageUnavailable
    (unreachable, timed out, no such bucket, refused credentials, a server error)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = _error_code(exc)
        full = code in FULL_ERROR_CODES or status == INSUFFICIENT_STORAGE
        return (StorageFull if full else StorageUnavailable)(f"{what}: {code or status} {error.get('Message', '')}".rstrip())
    return StorageUnavailable(f"{what}: {exc}")


class S3Storage:
    """Objects under ``prefix`` in ``bucket``; keys are the local folder's relative keys."""

    def __init__(self, bucket: str, prefix: str = "", *, client: S3Client | None = None, presign_client: S3Client | None = None) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = client if client is not None else s3_client()
        # Presigned URLs are signed for the host that clients use, which may not be the service's (see settings).
        self.presign_client = presign_client if presign_client is not None else self.client

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        bucket, prefix = parse_storage_url(settings.storage_url)
        public = settings.storage_presigned_endpoint_url
        return cls(bucket, prefix, presign_client=s3_client(public) if public else None)

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/") + f" at {self.client.meta.endpoint_url}"

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> StoredObject:
        """One PUT with the SHA-256 for the store to verify: the object is stored whole, or the old one (or none) stays."""
        digest = hashlib.sha256(data).digest()
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=data,
                ContentLength=len(data),
                ChecksumAlgorithm=CHECKSUM_ALGORITHM,
                ChecksumSHA256=base64.b64encode(digest).decode(),
            )
        except (BotoCoreError, ClientError) as exc:
            raise classify_s3_error(exc, f"cannot write {key!r} ({len(data)} bytes) to {self.location}") from exc
        return StoredObject(key, len(data), digest.hex())

    def _get(self, key: str, byte_range: str | None = None) -> Any:
        """GetObject's body; None for a range that starts past the end; FileNotFoundError for a missing object (as a
        missing file); StorageError otherwise."""
        arguments = {"Bucket": self.bucket, "Key": self._key(key)}
        if byte_range is not None:
            arguments["Range"] = byte_range
        try:
            return self.client.get_object(**arguments)["Body"]
        except ClientError as exc:
            if _error_code(exc) in NOT_FOUND_CODES:
                raise FileNotFoundError(f"no object {key!r} in {self.location}") from exc
            if byte_range is not None and _error_code(exc) in RANGE_NOT_SATISFIABLE_CODES:
                return None
            raise classify_s3_error(exc, f"cannot read {key!r} from {self.location}") from exc
        except BotoCoreError as exc:
            raise classify_s3_error(exc, f"cannot read {key!r} from {self.location}") from exc

    def read(self, key: str) -> bytes:
        body = self._get(key)
        try:
            return body.read()
        except BotoCoreError as exc:
            raise classify_s3_error(exc, f"cannot read {key!r} from {self.location}") from exc
        finally:
            body.close()

    def iter_chunks(self, key: str, chunk_bytes: int = CHUNK_BYTES, *, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The object's bytes ``start`` to ``end`` (exclusive; None: to its end) by one Range GET, in chunks. The GET is
        sent here, before the first chunk is asked for, so that a failure comes before a response has started."""
        if end is not None and end <= start:
            return iter(())
        # No Range for the whole object: a range on an empty object is refused (416) where a whole GET is not.
        byte_range = None if start == 0 and end is None else f"bytes={start}-{'' if end is None else end - 1}"
        body = self._get(key, byte_range)
        if body is None:
            return iter(())  # from past the end: nothing, as a file read there
        return self._chunks(body, key, chunk_bytes)

    def _chunks(self, body: Any, key: str, chunk_bytes: int) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(chunk_bytes)
        except BotoCoreError as exc:  # the store stopped answering mid-object
            raise classify_s3_error(exc, f"cannot read {key!r} from {self.location}") from exc
        finally:
            body.close()

    def _head(self, key: str) -> dict[str, Any] | None:
        """HeadObject's answer; None for a missing object."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _error_code(exc) in NOT_FOUND_CODES:
                return None
            raise classify_s3_error(exc, f"cannot look up {key!r} in {self.location}") from exc
        except BotoCoreError as exc:
            raise classify_s3_error(exc, f"cannot look up {key!r} in {self.location}") from exc

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise FileNotFoundError(f"no object {key!r} in {self.location}")
        return int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under ``prefix`` (a folder-like key: ``uploads/job_1`` spares ``uploads/job_10``) by
        listing it and deleting in batches. Best effort, as the local folder's removal: callers clean up on their way
        out of a failure, so an unreachable store is logged (its objects stay) rather than raised over that failure."""
        folder = self._key(prefix) + "/"
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder, PaginationConfig={"PageSize": DELETE_BATCH}
            )
            for page in pages:
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if not keys:
                    continue
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
                for failed in answer.get("Errors", []):
                    reason = f"{failed.get('Code')} {failed.get('Message')}"
                    log.warning("could not remove %s from %s: %s", failed.get("Key"), self.location, reason)
        except (BotoCoreError, ClientError) as exc:
            log.warning("could not remove %s/ from %s; its objects stay: %s", prefix, self.location, classify_s3_error(exc, "delete"))

    def check(self) -> None:
        """Readiness: the bucket exists and takes a write (a probe object, written and removed)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _error_code(exc) in NOT_FOUND_CODES:
                raise StorageUnavailable(f"no bucket {self.bucket!r} at {self.client.meta.endpoint_url}") from exc
            raise classify_s3_error(exc, f"bucket {self.bucket!r} is not reachable") from exc
        except BotoCoreError as exc:
            raise classify_s3_error(exc, f"bucket {self.bucket!r} is not reachable") from exc
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(PROBE_KEY), Body=b"ok")
            self.client.delete_object(Bucket=self.bucket, Key=self._key(PROBE_KEY))
        except (BotoCoreError, ClientError) as exc:
            raise classify_s3_error(exc, f"storage {self.location} is not writable") from exc

    def download_url(self, key: str, *, filename: str, content_type: str, expires_seconds: int) -> str | None:
        """A presigned GET URL, valid ``expires_seconds``, that answers with the API's own disposition and type."""
        params = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "ResponseContentDisposition": f'attachment; filename="{filename}"',
            "ResponseContentType": content_type,
        }
        try:
            return self.presign_client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_seconds)
        except BotoCoreError as exc:  # no credentials to sign with
            raise classify_s3_error(exc, f"cannot sign a URL for {key!r} in {self.location}") from exc
