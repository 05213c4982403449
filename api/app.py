"""The app factory: ``create_app(settings)`` wires the database, storage, queue, routers, errors and metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import schemas
from api.auth import authenticate
from api.errors import install_error_handlers
from api.routers import console, evaluations, health, jobs, pools, predictions, students, teachers
from api.routers.predictions import prediction_state
from service.auth import check_exposure
from service.db import make_engine, make_session_factory, migrate
from service.jobs import COUNTERS
from service.queue import create_celery
from service.reaper import start_reaper
from service.settings import Settings
from service.storage import create_storage
from service.webhooks import start_dispatcher

log = logging.getLogger("clipforge.api")


class DatabaseCounters(Collector):
    """Counters kept in the database (service.jobs.COUNTERS), so that they count for every process of the service;
    /metrics reads them into ``values`` before each scrape."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, help_text in COUNTERS.items():
            yield CounterMetricFamily(f"clipforge_{name}", help_text, value=self.values.get(name, 0))


@dataclass
class ApiMetrics:
    """Per-app collectors, so that several apps in one process (tests) do not collide."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    submitted: Counter
    jobs: Gauge
    service_counters: DatabaseCounters

    @classmethod
    def create(cls) -> ApiMetrics:
        registry = CollectorRegistry()
        metrics = cls(
            registry,
            Counter("clipforge_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry),
            Histogram("clipforge_http_request_seconds", "HTTP request latency", ["method", "route"], registry=registry),
            Counter("clipforge_jobs_submitted", "jobs accepted by POST /v1/jobs", registry=registry),
            Gauge("clipforge_jobs", "jobs by status", ["status"], registry=registry),
            DatabaseCounters(),
        )
        registry.register(metrics.service_counters)
        return metrics


def create_app(settings: Settings, *, prepared: bool = False) -> FastAPI:
    """The app. ``prepared``: the caller (``clipforge api``/``serve``) has already migrated the database and checked
    the exposure rule before starting anything, so the lifespan does not do it a second time."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not prepared:
            settings.ensure_local_dirs()
            if settings.migrate_on_start:
                migrate(settings.database_url)
            # Refuses to start on a non-loopback address without any API key; says so when it runs open on loopback.
            open_mode_notice = check_exposure(settings, app.state.session_factory)
            if open_mode_notice:
                log.warning(open_mode_notice)
        stop_reaper = start_reaper(settings, app.state.session_factory, app.state.celery, app.state.storage)
        stop_webhooks = start_dispatcher(settings, app.state.session_factory)
        yield
        stop_webhooks.set()
        stop_reaper.set()
        app.state.engine.dispose()

    app = FastAPI(title="clipforge", version="0.1.0", lifespan=lifespan, description="Custom small classifiers from CLIP, as a service.")
    engine = make_engine(settings.database_url)
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.storage = create_storage(settings)
    app.state.celery = create_celery(settings)
    app.state.metrics = ApiMetrics.create()
    for name, value in prediction_state(settings).items():
        setattr(app.state, name, value)

    install_error_handlers(app)
    # Everything under /v1 needs an API key (once any exists); health, metrics and the schema do not.
    for module in (jobs, evaluations, predictions, pools, teachers, students):
        app.include_router(module.router, dependencies=[Depends(authenticate)], responses={401: {"model": schemas.ErrorBody}})
    app.include_router(health.router)
    app.include_router(console.router)  # the web console's static files: no key to load them, its requests send one

    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    return app


class RequestMetrics:
    """Counts and times every HTTP request, as plain ASGI: Starlette's BaseHTTPMiddleware (``@app.middleware``) runs
    each request in a task group with a streamed response (GET /healthz: 1.7 ms of CPU with it, 1.1 ms without)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # an exception before the response started

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")  # the router sets it on this same scope
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - began)
