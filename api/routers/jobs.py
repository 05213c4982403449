"""Jobs: submit (JSON or multipart with example images), list, read, cancel, delete, events and artifacts."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api import schemas
from api.deps import PrincipalDep, QueueDep, SessionDep, SettingsDep, StorageDep
from api.files import FILE_RESPONSES, STREAM_QUERY, check_artifact_name, stored_file_response
from api.multipart import read_body, read_form
from api.validation import Submission, invalid, parse_json_spec, submission_from_json, submission_from_multipart
from core.spec import noise_generator_warning
from service import jobs as repo
from service import submissions, webhooks
from service.db import session_scope
from service.ids import is_id
from service.models import Artifact, Job, JobEvent, WebhookAttempt, WebhookDelivery, utcnow

log = logging.getLogger("clipforge.api")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ERRORS = schemas.ERROR_RESPONSES
MAX_IDEMPOTENCY_KEY = 200
EVENT_STREAM_PING_S = 15  # a comment line this often keeps proxies from closing an idle stream


def job_out(job: Job, stall_after_seconds: float) -> schemas.Job:
    error = schemas.JobError(code=job.error_code, message=job.error_message) if job.error_code else None
    return schemas.Job(
        id=job.id,
        status=job.status,  # type: ignore[arg-type]
        stage=job.stage,
        progress=job.progress,
        eta_seconds=job.eta_seconds,
        estimated_seconds=job.estimated_seconds,
        heartbeat_at=job.heartbeat_at,
        lease_expires_at=job.lease_expires_at,
        stalled=repo.is_stalled(job, utcnow(), stall_after_seconds),
        webhook_url=job.webhook_url,
        webhook_events=(job.webhook_events or list(webhooks.EVENTS)) if job.webhook_url else None,
        seed=job.seed,
        teacher=job.teacher,
        spec=job.spec,
        warnings=submission_warnings(job.spec),
        error=error,
        attempts=job.attempts,
        metrics=job.metrics,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        updated_at=job.updated_at,
    )


def submission_warnings(spec: dict[str, Any]) -> list[str]:
    warning = noise_generator_warning(str((spec.get("synthesis") or {}).get("generator")))
    return [warning] if warning else []


def event_out(event: JobEvent) -> schemas.Event:
    return schemas.Event.model_validate(event, from_attributes=True)


def artifact_out(artifact: Artifact) -> schemas.Artifact:
    return schemas.Artifact(
        name=artifact.name,
        size=artifact.size,
        sha256=artifact.sha256,
        content_type=artifact.content_type,
        url=f"/v1/jobs/{artifact.job_id}/artifacts/{artifact.name}",
        created_at=artifact.created_at,
    )


async def read_submission(request: Request, settings: SettingsDep) -> Submission:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared_text = request.headers.get("content-length") or "0"
    declared = int(declared_text) if declared_text.isdigit() else 0
    if content_type in ("application/json", ""):
        if declared > settings.max_json_bytes:
            raise invalid("request_too_large", f"the JSON body is {declared} bytes; at most {settings.max_json_bytes}", status=413)
        body = await read_body(request, settings.max_json_bytes, "request_too_large")
        raw = parse_json_spec(body, settings)
        if raw.get("webhook_url") is not None:  # its host is resolved (SSRF check): a blocking call, off the event loop
            return await run_in_threadpool(submission_from_json, raw, settings)
        return submission_from_json(raw, settings)
    if content_type == "multipart/form-data":
        fields, files = await read_form(
            request,
            settings,
            max_files=settings.max_classes * settings.max_images_per_class,
            text_fields=("spec",),
            file_limit=lambda _: settings.max_image_bytes,
            hint="send 'spec' and images[CLASS] files",
        )
        spec_text = fields.get("spec")
        return await run_in_threadpool(submission_from_multipart, spec_text, files, settings)
    raise invalid("unsupported_media_type", f"send application/json or multipart/form-data, not {content_type!r}", status=415)


# The body is read by hand (read_submission), so FastAPI cannot see it: declared here for the schema and its clients.
SUBMIT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["classes"],
                "properties": {"classes": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "object"}]}}},
                "description": "the customization spec (core.spec.CustomizeSpec); unknown fields are refused",
            }
        },
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["spec"],
                "properties": {"spec": {"type": "string", "description": "the JSON spec"}},
                "description": "the spec, and example images as files named images[CLASS]",
            }
        },
    },
}


@router.post("", status_code=201, response_model=schemas.Job, responses=ERRORS, openapi_extra={"requestBody": SUBMIT_BODY})
async def submit_job(
    request: Request,
    settings: SettingsDep,
    storage: StorageDep,
    queue: QueueDep,
    principal: PrincipalDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise invalid("invalid_idempotency_key", f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters", status=400)
    submission = await read_submission(request, settings)
    factory = request.app.state.session_factory
    # Storing, publishing and confirming in one worker-thread hop: each hop costs more CPU than a small transaction.
    job, created = await run_in_threadpool(
        submissions.submit_job, submission, idempotency_key, factory, storage, queue, principal.tenant_id, settings
    )
    if created:
        request.app.state.metrics.submitted.inc()
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
        with session_scope(factory) as session:
            job = repo.get_job(session, job.id)
    return JSONResponse(job_out(job, settings.stall_after_seconds).model_dump(mode="json"), status_code=201, headers=headers)


@router.get("", response_model=schemas.JobPage, responses=ERRORS)
def get_jobs(
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    status: Annotated[schemas.JobStatus | None, Query()] = None,
    after: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> schemas.JobPage:
    if after is not None and not is_id(after, "job"):  # a job id is the only valid job-list cursor
        raise invalid("invalid_cursor", f"after={after[:40]!r} is not a cursor: pass a page's next_after (a job id)", status=400)
    page, has_more = repo.list_jobs(session, status=status, after=after, limit=limit, tenant_id=principal.tenant_id)
    return schemas.JobPage(
        data=[job_out(j, settings.stall_after_seconds) for j in page],
        has_more=has_more,
        next_after=page[-1].id if has_more and page else None,
    )


def read_job(session_factory: sessionmaker[Session], job_id: str, tenant_id: str | None, stall_after_seconds: float) -> schemas.Job:
    with session_scope(session_factory) as session:
        return job_out(repo.get_job(session, job_id, tenant_id), stall_after_seconds)


@router.get("/{job_id}", response_model=schemas.Job, responses=ERRORS)
async def get_job(job_id: str, request: Request, principal: PrincipalDep, settings: SettingsDep) -> schemas.Job:
    # Clients poll this: one primary-key read, done on the event loop. A worker-thread hop per request costs more CPU
    # than the query and, under GIL contention, adds tens of ms of tail latency (bench/results/load.md).
    return read_job(request.app.state.session_factory, job_id, principal.tenant_id, settings.stall_after_seconds)


@router.post("/{job_id}/cancel", response_model=schemas.Job, responses=ERRORS)
def cancel_job(job_id: str, session: SessionDep, principal: PrincipalDep, settings: SettingsDep) -> schemas.Job:
    job = repo.request_cancel(session, job_id, principal.tenant_id)
    session.commit()  # before the answer: the session dependency's own commit runs after the response is sent
    return job_out(job, settings.stall_after_seconds)


@router.delete("/{job_id}", status_code=204, responses=ERRORS)
def delete_job(job_id: str, session: SessionDep, storage: StorageDep, principal: PrincipalDep) -> Response:
    prefixes = repo.delete_job(session, job_id, principal.tenant_id)
    session.commit()
    for prefix in prefixes:
        storage.delete_prefix(prefix)
    return Response(status_code=204)


EVENT_STREAM_PAGE = 500  # events read per poll of a stream


def read_events_page(
    factory: sessionmaker[Session], job_id: str, tenant_id: str | None, after: int | None, limit: int
) -> schemas.EventPage:
    with session_scope(factory) as session:
        repo.get_job(session, job_id, tenant_id)
        page, has_more = repo.list_events(session, job_id, after=after, limit=limit)
        # next_after is set on every non-empty page, so that a follower can poll from it for new events.
        return schemas.EventPage(data=[event_out(e) for e in page], has_more=has_more, next_after=page[-1].id if page else after)


def read_new_events(factory: sessionmaker[Session], job_id: str, after: int | None) -> tuple[str | None, list[schemas.Event]]:
    """The job's status (None once deleted), then its events after ``after``. Status first: a finished job's last
    event is committed with its status, so when the status read is final, the events read next include the last."""
    with session_scope(factory) as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        page, _ = repo.list_events(session, job_id, after=after, limit=EVENT_STREAM_PAGE)
        return status, [event_out(e) for e in page]


async def stream_events(
    factory: sessionmaker[Session], job_id: str, after: int | None, poll_seconds: float
) -> AsyncIterator[ServerSentEvent]:
    """Every event after ``after`` as it is recorded, each with its id (a client resumes with Last-Event-ID); an
    ``end`` event and the end of the stream once the job is finished (or deleted) and every event was sent."""
    while True:
        status, page = await run_in_threadpool(read_new_events, factory, job_id, after)
        for event in page:
            yield ServerSentEvent(data=event.model_dump_json(), event=event.kind, id=str(event.id))
            after = event.id
        if (status is None or status in repo.TERMINAL) and len(page) < EVENT_STREAM_PAGE:
            yield ServerSentEvent(data=json.dumps({"status": status}), event="end")
            return
        if len(page) < EVENT_STREAM_PAGE:
            await anyio.sleep(poll_seconds)


@router.get(
    "/{job_id}/events",
    response_model=schemas.EventPage,
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "with stream=true: Server-Sent Events"}},
)
async def get_events(
    job_id: str,
    request: Request,
    principal: PrincipalDep,
    settings: SettingsDep,
    after: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    stream: Annotated[bool, Query(description="Server-Sent Events until the job ends")] = False,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20)] = None,
) -> Response:
    factory = request.app.state.session_factory
    if not stream:
        page = await run_in_threadpool(read_events_page, factory, job_id, principal.tenant_id, after, limit)
        return JSONResponse(page.model_dump(mode="json"))
    if last_event_id is not None:  # a reconnecting EventSource: resume after the last event it saw
        if not last_event_id.isdigit():
            raise invalid("invalid_cursor", f"Last-Event-ID {last_event_id[:20]!r} is not an event id", status=400)
        after = max(after or 0, int(last_event_id))
    await run_in_threadpool(read_job, factory, job_id, principal.tenant_id, settings.stall_after_seconds)  # 404 before streaming
    events = stream_events(factory, job_id, after, settings.event_stream_poll_seconds)
    return EventSourceResponse(events, ping=EVENT_STREAM_PING_S, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/{job_id}/webhook-deliveries", response_model=schemas.WebhookDeliveryList, responses=ERRORS)
def get_webhook_deliveries(job_id: str, session: SessionDep, principal: PrincipalDep) -> schemas.WebhookDeliveryList:
    """The job's webhook deliveries, oldest first, each with every attempt (what the receiver answered, or why not)."""
    repo.get_job(session, job_id, principal.tenant_id)
    deliveries = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id).order_by(WebhookDelivery.created_at)).all()
    attempts: dict[str, list[WebhookAttempt]] = {}
    ids = [d.id for d in deliveries]
    if ids:
        rows = session.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(ids)).order_by(WebhookAttempt.id))
        for attempt in rows:
            attempts.setdefault(attempt.delivery_id, []).append(attempt)
    return schemas.WebhookDeliveryList(
        data=[
            schemas.WebhookDelivery(
                id=d.id,
                event=d.event,
                url=d.url,
                status=d.status,  # type: ignore[arg-type]
                attempts=[schemas.WebhookAttempt.model_validate(a, from_attributes=True) for a in attempts.get(d.id, [])],
                next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
                created_at=d.created_at,
                finished_at=d.finished_at,
            )
            for d in deliveries
        ]
    )


@router.get("/{job_id}/artifacts", response_model=schemas.ArtifactList, responses=ERRORS)
def get_artifacts(job_id: str, session: SessionDep, principal: PrincipalDep) -> schemas.ArtifactList:
    repo.get_job(session, job_id, principal.tenant_id)
    return schemas.ArtifactList(data=[artifact_out(a) for a in repo.list_artifacts(session, job_id)])


# {name:path}: a name holding (encoded) slashes still reaches the handler, to be refused with a clear code, not a bare 404.
@router.get("/{job_id}/artifacts/{name:path}", responses=FILE_RESPONSES)
@router.head("/{job_id}/artifacts/{name:path}", responses=FILE_RESPONSES, operation_id="head_artifact")
def download_artifact(
    job_id: str,
    name: Annotated[str, Path()],
    session: SessionDep,
    storage: StorageDep,
    request: Request,
    principal: PrincipalDep,
    stream: Annotated[bool, STREAM_QUERY] = False,
) -> Response:
    """The artifact's bytes; ``HEAD`` for its headers alone, ``Range: bytes=a-b`` for part of it (206), to resume."""
    check_artifact_name(name)
    repo.get_job(session, job_id, principal.tenant_id)
    artifact = repo.get_artifact(session, job_id, name)
    return stored_file_response(request, storage, artifact, f"artifact {name!r} of job {job_id!r}", stream=stream)
