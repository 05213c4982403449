"""The app factory: ``create_app(settings)`` wires the database, storage, queue, routers, errors and metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from api import schemas
from api.auth import authenticate
from api.errors import install_error_handlers
from api.routers import health, jobs, students, teachers
from service.auth import check_exposure
from service.db import make_engine, make_session_factory, migrate
from service.queue import create_celery
from service.reaper import start_reaper
from service.settings import Settings
from service.storage import create_storage

log = logging.getLogger("clipforge.api")


@dataclass
class ApiMetrics:
    """Per-app collectors, so that several apps in one process (tests) do not collide."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    submitted: Counter
    jobs: Gauge

    @classmethod
    def create(cls) -> ApiMetrics:
        registry = CollectorRegistry()
        return cls(
            registry,
            Counter("clipforge_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry),
            Histogram("clipforge_http_request_seconds", "HTTP request latency", ["method", "route"], registry=registry),
            Counter("clipforge_jobs_submitted", "jobs accepted by POST /v1/jobs", registry=registry),
            Gauge("clipforge_jobs", "jobs by status", ["status"], registry=registry),
        )


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.ensure_local_dirs()
        if settings.migrate_on_start:
            migrate(settings.database_url)
        # Refuses to start on a non-loopback address without any API key; says so when it runs open on loopback.
        open_mode_notice = check_exposure(settings, app.state.session_factory)
        if open_mode_notice:
            log.warning(open_mode_notice)
        stop_reaper = start_reaper(settings, app.state.session_factory, app.state.celery)
        yield
        stop_reaper.set()
        app.state.engine.dispose()

    app = FastAPI(title="clipforge", version="0.1.0", lifespan=lifespan, description="Custom small classifiers from CLIP, as a service.")
    engine = make_engine(settings.database_url)
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.storage = create_storage(settings.storage_root)
    app.state.celery = create_celery(settings)
    app.state.metrics = ApiMetrics.create()

    install_error_handlers(app)
    # Everything under /v1 needs an API key (once any exists); health, metrics and the schema do not.
    for module in (jobs, teachers, students):
        app.include_router(module.router, dependencies=[Depends(authenticate)], responses={401: {"model": schemas.ErrorBody}})
    app.include_router(health.router)

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        began = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics: ApiMetrics = request.app.state.metrics
        metrics.requests.labels(request.method, route, str(response.status_code)).inc()
        metrics.latency.labels(request.method, route).observe(time.perf_counter() - began)
        return response

    return app
