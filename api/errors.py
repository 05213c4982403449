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

from service.jobs import ServiceError
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
        return error_response(422, "invalid_request", "the request's parameters are invalid", details)

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
