"""Serving a stored file (a job's artifact, an evaluation's): ETag and checksums, conditional and ranged GETs, HEAD, and
a presigned redirect to the object store when that is on. One implementation for every router that serves files."""

from __future__ import annotations

import base64
import re
from typing import Protocol

from fastapi import Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from api import schemas
from api.validation import invalid
from service.errors import ServiceError
from service.settings import Settings
from service.storage import Storage

# Artifact names are plain file names; anything else (../, absolute paths, encoded slashes) is refused before any lookup.
ARTIFACT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
PRESIGNED_REDIRECT_STATUS = 307  # Temporary Redirect: the client repeats the same GET at the store's URL
FILE_RESPONSES = {
    **schemas.ERROR_RESPONSES,
    200: {"content": {"application/octet-stream": {}}},
    206: {"description": "a single byte range"},
    307: {"description": "with CLIPFORGE_STORAGE_PRESIGNED_DOWNLOADS on: the object store's presigned URL (Location)"},
    416: {"model": schemas.ErrorBody},
}
STREAM_QUERY = Query(description="always stream the bytes through the API, even with presigned downloads on (the web console)")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) of a single ``Range: bytes=...`` request, None for the whole object; raises
    416 ``range_not_satisfiable`` for a range outside the object. Several ranges at once are served whole (RFC 9110
    lets a server ignore Range)."""
    if header is None:
        return None
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None  # unparseable or a multi-range request: the whole object, 200
    first, last = match.groups()
    if first == "":  # a suffix: the last N bytes
        length = int(last)
        start, end = max(0, size - length), size
    else:
        start, end = int(first), size if last == "" else min(int(last) + 1, size)
    if start >= size or end <= start:
        message = f"range {header!r} is outside the artifact's {size} bytes"
        raise ServiceError("range_not_satisfiable", message, 416, headers={"Content-Range": f"bytes */{size}"})
    return start, end


def check_artifact_name(name: str) -> None:
    if re.fullmatch(ARTIFACT_NAME, name) is None or ".." in name:
        raise invalid("invalid_artifact_name", f"{name[:100]!r} is not an artifact name (a plain file name)", status=400)


class StoredFile(Protocol):
    name: str
    size: int
    sha256: str
    content_type: str
    storage_key: str


def presigned_redirect(request: Request, storage: Storage, artifact: StoredFile, headers: dict[str, str]) -> Response | None:
    """A 307 to the store's presigned URL for a plain GET when ``storage_presigned_downloads`` is on and the backend has
    URLs (object storage); None otherwise. HEAD and Range requests stay with the API, which answers them from the row
    and one ranged read. The redirect carries the checksums, so that a client checks what the store sends."""
    settings: Settings = request.app.state.settings
    if not settings.storage_presigned_downloads or request.method != "GET" or "range" in request.headers:
        return None

    url = storage.download_url(
        artifact.storage_key,
        filename=artifact.name,
        content_type=artifact.content_type,
        expires_seconds=settings.storage_presigned_expiry_seconds,
    )
    if url is None:
        return None
    kept = {name: headers[name] for name in ("ETag", "X-Checksum-Sha256", "Digest")}
    return RedirectResponse(url, status_code=PRESIGNED_REDIRECT_STATUS, headers={**kept, "Cache-Control": "no-store"})


def stored_file_response(request: Request, storage: Storage, artifact: StoredFile, what: str, *, stream: bool = False) -> Response:
    """An artifact row's file: ETag and checksums, 304 on If-None-Match, HEAD, a single Range (206) with If-Range; a
    plain GET redirected to the store (307) with presigned downloads on."""
    etag = f'"{artifact.sha256}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "X-Checksum-Sha256": artifact.sha256,
        "Digest": "sha-256=" + base64.b64encode(bytes.fromhex(artifact.sha256)).decode(),
        "Content-Length": str(artifact.size),
        "Content-Disposition": f'attachment; filename="{artifact.name}"',
    }
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag, "Accept-Ranges": "bytes"})
    if not storage.exists(artifact.storage_key):
        raise invalid("artifact_missing", f"{what} is recorded but its file is missing", status=500)
    redirect = None if stream else presigned_redirect(request, storage, artifact, headers)
    if redirect is not None:
        return redirect
    # If-Range: a range only while the client's copy is this version; otherwise the whole (new) object.
    if_range = request.headers.get("if-range")
    span = byte_range(request.headers.get("range"), artifact.size) if if_range in (None, etag) else None
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{artifact.size}"
        headers["Content-Length"] = str(span[1] - span[0])
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=artifact.content_type)
    start, end = span if span is not None else (0, None)
    body = storage.iter_chunks(artifact.storage_key, start=start, end=end)
    return StreamingResponse(body, status_code=status, media_type=artifact.content_type, headers=headers)
