"""The authentication dependency: ``Authorization: Bearer <key>`` names the tenant a request acts for.

Without any active key the service runs open (see service.auth): requests from a loopback client act as the anonymous
tenant. Every failure is 401 in the standard error shape with ``WWW-Authenticate: Bearer``.

The key is looked up on every request (a revoked key stops working at once), and the lookup runs on the event loop, not
in a worker thread: it is one primary-key read, and a thread hand-off costs more CPU than that read and, under GIL
contention, tens of milliseconds of tail latency (bench/results/load.md).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.auth import OPEN_PRINCIPAL, Principal, any_active_key, is_loopback, verify_key
from service.errors import ServiceError

# auto_error=False: a missing or malformed header is answered here, in the service's error shape.
bearer_scheme = HTTPBearer(auto_error=False, scheme_name="ApiKey", description="an API key from `clipforge keys create --tenant NAME`")


def client_is_loopback(request: Request) -> bool:
    """The client's address as uvicorn reports it (X-Forwarded-For applied when a local proxy sent it) is loopback."""
    return is_loopback(request.client.host if request.client else "")


def _unauthorized(code: str, message: str, challenge: str) -> ServiceError:
    return ServiceError(code, message, 401, headers={"WWW-Authenticate": challenge})


async def authenticate(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]) -> Principal:
    settings = request.app.state.settings
    with request.app.state.engine.connect() as connection:
        if credentials is not None:
            principal = verify_key(connection, credentials.credentials)
            if principal is None:
                raise _unauthorized("invalid_api_key", "the API key is unknown, malformed or revoked", 'Bearer error="invalid_token"')
            return principal
        keys_exist = any_active_key(connection)
    if keys_exist or not is_loopback(settings.host) or not client_is_loopback(request):
        raise _unauthorized("missing_api_key", "send an API key: Authorization: Bearer <key>", "Bearer")
    return OPEN_PRINCIPAL


PrincipalDep = Annotated[Principal, Depends(authenticate)]
