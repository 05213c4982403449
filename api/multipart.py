"""Reading a multipart/form-data body with limits: the whole body bounded before parsing, a cut-off body refused,
and the parts split into text fields and files (each file read up to its own limit, so oversized ones are seen)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser

from api.validation import invalid
from service.settings import Settings

MAX_TEXT_FIELDS = 16


async def read_body(request: Request, limit: int, code: str) -> bytes:
    """The whole body, refused (413) as soon as it passes ``limit``: a chunked body declares no length up front."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise invalid(code, f"the body is over {limit} bytes", {"limit": limit}, status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def _ends_with_closing_boundary(body: bytes, content_type: str) -> bool:
    """A body cut off mid-upload parses 'fine' without its last part; its missing closing boundary gives it away."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    return match is not None and body.rstrip(b"\r\n").endswith(b"--" + match[1].encode("latin-1") + b"--")


async def read_form(
    request: Request,
    settings: Settings,
    *,
    max_files: int,
    text_fields: Collection[str],
    file_limit: Callable[[str], int],
    hint: str,
) -> tuple[dict[str, str], list[tuple[str, str | None, bytes]]]:
    """(text fields by name, [(field, file name, content)]) of the request's multipart body. Any text field not in
    ``text_fields`` is refused (``unexpected_field``, with ``hint`` saying what to send); each file is read up to
    ``file_limit(field) + 1`` bytes, so that the caller sees one that is too large."""
    declared_text = request.headers.get("content-length") or "0"
    declared = int(declared_text) if declared_text.isdigit() else 0
    if declared > settings.max_request_bytes:
        raise invalid("upload_too_large", f"the upload is {declared} bytes; at most {settings.max_request_bytes}", status=413)
    body = await read_body(request, settings.max_request_bytes, "upload_too_large")
    if not _ends_with_closing_boundary(body, request.headers.get("content-type", "")):
        raise invalid("invalid_multipart", "the multipart body has no boundary, or is cut off before its closing boundary", status=400)

    async def replay() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(
        request.headers, replay(), max_files=max_files, max_fields=MAX_TEXT_FIELDS, max_part_size=settings.max_json_bytes
    )
    try:
        form = await parser.parse()
    except Exception as exc:  # starlette's MultiPartException: too many files, a field too large, a malformed body
        raise invalid("invalid_multipart", f"cannot read the multipart body: {exc}", status=400) from None
    try:
        fields: dict[str, str] = {}
        files: list[tuple[str, str | None, bytes]] = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append((key, value.filename, await value.read(file_limit(key) + 1)))
            elif key in text_fields:
                fields[key] = value
            else:
                raise invalid("unexpected_field", f"unexpected form field {key!r}; {hint}", {"field": key})
    finally:
        await form.close()
    return fields, files


def multipart_body(properties: dict[str, Any], description: str) -> dict[str, Any]:
    """The OpenAPI request body of an endpoint that reads its multipart form by hand (read_form): FastAPI cannot see it."""
    schema = {"type": "object", "properties": properties, "description": description}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


async def read_image_form(
    request: Request, settings: Settings, *, max_files: int, text_fields: Collection[str], archive_field: str, hint: str
) -> tuple[dict[str, str], list[tuple[str, str | None, bytes]]]:
    """read_form for images sent as files and/or one zip (``archive_field``, up to the request's size): 415 for any
    body but multipart/form-data."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise invalid("unsupported_media_type", f"send multipart/form-data, not {content_type!r}", status=415)
    return await read_form(
        request,
        settings,
        max_files=max_files,
        text_fields=text_fields,
        file_limit=lambda field: settings.max_request_bytes if field == archive_field else settings.max_image_bytes,
        hint=hint,
    )
