"""The service's one error type: a machine-readable code, a message and the HTTP status the API answers with."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error with a machine-readable code; the API answers ``http_status``."""

    def __init__(self, code: str, message: str, http_status: int = 400, details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.http_status, self.details = code, message, http_status, details
        self.headers = headers  # extra response headers, e.g. Retry-After
