"""Liveness, readiness (database, broker, storage) and Prometheus metrics."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select

from api import schemas
from api.auth import client_is_loopback
from api.deps import QueueDep, SessionDep, SettingsDep, StorageDep
from api.errors import error_response
from service.db import ping
from service.errors import ServiceError
from service.jobs import STATUSES, counters
from service.models import Job
from service.queue import ping_broker
from service.settings import Settings

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=schemas.Health)
def healthz() -> schemas.Health:
    return schemas.Health(status="ok")


@router.get("/readyz", response_model=schemas.Health, responses={503: {"model": schemas.ErrorBody}})
def readyz(request: Request, queue: QueueDep, storage: StorageDep) -> Response:
    checks: dict[str, str] = {}
    probes = {"database": lambda: ping(request.app.state.engine), "broker": lambda: ping_broker(queue), "storage": storage.check}
    for name, probe in probes.items():
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # any failure means not ready; say which and why
            checks[name] = f"error: {exc}"
    if all(v == "ok" for v in checks.values()):
        return JSONResponse(schemas.Health(status="ready", checks=checks).model_dump())
    return error_response(503, "not_ready", "a dependency is unreachable", checks)


def _check_metrics_access(request: Request, settings: Settings) -> None:
    """The operator's view of every tenant: for the configured scraper's token, or loopback clients without one."""
    if settings.metrics_token is not None:
        sent = request.headers.get("authorization", "")
        expected = f"Bearer {settings.metrics_token.get_secret_value()}"
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            raise ServiceError("invalid_metrics_token", "send the metrics token: Authorization: Bearer <token>", 401,
                               headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        return
    if not client_is_loopback(request):
        raise ServiceError("metrics_loopback_only", "set CLIPFORGE_METRICS_TOKEN to scrape /metrics from another host", 403)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    _check_metrics_access(request, settings)
    counts = {status: count for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status))}
    gauge = request.app.state.metrics.jobs
    for status in STATUSES:
        gauge.labels(status=status).set(counts.get(status, 0))
    request.app.state.metrics.service_counters.values = counters(session)
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
