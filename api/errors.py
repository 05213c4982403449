"""One error shape for every 4xx and 5xx: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ServiceError
from service.storage import StorageError, StorageFull, StorageUnavailable

log = logging.getLogger("clipforge.api")

DATABASE_RETRY_AFTER_S = 5  # the Retry-After of a 503 database_unavailable
INTERNAL_ERROR = 500
STORAGE_STATUS = {StorageUnavailable: 503, StorageFull: 507}  # any other StorageError (an invalid key) is ours: 500

CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


# How a validation error's location (its first part) reads in a message.
LOCATION_KINDS = {"query": "query parameter", "path": "path parameter", "header": "header", "cookie": "cookie", "body": "body field"}
MAX_PROBLEMS_IN_MESSAGE = 3  # the rest are in details; the message says how many more


def _where(loc: list[Any]) -> str:
    """``["query", "limit"]`` -> ``query parameter 'limit'``; ``["body", "classes", 0]`` -> ``body field 'classes[0]'``."""
    kind, *path = loc or ["request"]
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    if not name:
        return "the request body" if kind == "body" else f"the request's {kind}"
    return f"{LOCATION_KINDS.get(str(kind), str(kind))} {name!r}"


def validation_message(details: list[dict[str, Any]]) -> str:
    """One sentence naming each invalid field and its problem, e.g. ``query parameter 'limit': Input should be less
    than or equal to 100``; past MAX_PROBLEMS_IN_MESSAGE problems it counts the rest (all of them are in details)."""
    if not details:
        return "the request's parameters are invalid"
    parts = [f"{_where(d['loc'])}: {d.get('msg') or 'invalid'}" for d in details[:MAX_PROBLEMS_IN_MESSAGE]]
    more = len(details) - MAX_PROBLEMS_IN_MESSAGE
    return "; ".join(parts) + (f" (and {more} more problem{'s' if more > 1 else ''} in details)" if more > 0 else "")


def error_response(status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": jsonable_encoder(details)}}
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.http_status, exc.code, exc.message, exc.details, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = CODES_BY_STATUS.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return error_response(exc.status_code, code, message, None, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        return error_response(422, "invalid_request", validation_message(details), details)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_unavailable(_: Request, exc: DBAPIError) -> JSONResponse:
        # The database is down, unreachable or locked: a client may retry, nothing was half-done (every write is a
        # transaction, rolled back with the session).
        log.warning("database unavailable: %s", exc.orig if exc.orig is not None else exc)
        headers = {"Retry-After": str(DATABASE_RETRY_AFTER_S)}
        return error_response(503, "database_unavailable", "the database cannot be reached; try again", None, headers=headers)

    @app.exception_handler(StorageError)
    async def _storage_error(_: Request, exc: StorageError) -> JSONResponse:
        # Storage that fails under a read (a download, an existence check): the store is unreachable or refuses, and
        # a client may retry; writes map their own errors where they roll back (the submissions).
        log.warning("storage error: %s", exc)
        status = STORAGE_STATUS.get(type(exc), INTERNAL_ERROR)
        return error_response(status, exc.code, str(exc))

    @app.exception_handler(Exception)
    async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal server error")
