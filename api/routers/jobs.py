"""Jobs: submit (JSON or multipart with example images), list, read, cancel, delete, events and artifacts."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any, Protocol

import anyio
from celery import Celery
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api import schemas
from api.deps import PrincipalDep, QueueDep, SessionDep, SettingsDep, StorageDep
from api.multipart import read_body, read_form
from api.validation import Submission, invalid, parse_json_spec, submission_from_json, submission_from_multipart
from core.estimate import estimate_seconds
from core.spec import CustomizeSpec
from service import jobs as repo
from service import webhooks
from service.db import session_scope
from service.models import Artifact, Job, JobEvent, WebhookAttempt, WebhookDelivery
from service.queue import BrokerUnavailable
from service.reaper import publish_job
from service.settings import Settings
from service.storage import Storage, StorageError, StorageFull, job_prefixes, upload_key

log = logging.getLogger("clipforge.api")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ERRORS = {code: {"model": schemas.ErrorBody} for code in (400, 404, 409, 413, 415, 422, 503, 507)}
ERRORS.update({code: {"model": schemas.ErrorBody} for code in (401, 429)})  # a missing or invalid API key; a tenant's quota
MAX_IDEMPOTENCY_KEY = 200
# Artifact names are plain file names; anything else (../, absolute paths, encoded slashes) is refused before any lookup.
ARTIFACT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
EVENT_STREAM_PING_S = 15  # a comment line this often keeps proxies from closing an idle stream
PRESIGNED_REDIRECT_STATUS = 307  # Temporary Redirect: the client repeats the same GET at the store's URL


def estimated_duration(spec: dict[str, Any], settings: Settings) -> float | None:
    """The job's duration on a worker of the service's device (core.estimate's reference rates; None without one).
    With ``device: auto`` the API cannot see the workers' hardware and assumes the CPU budget."""
    device = spec.get("device") if spec.get("device") not in (None, "auto") else settings.device
    resolved = CustomizeSpec.model_validate(spec).resolved("cuda" if str(device).startswith("cuda") else "cpu")
    return estimate_seconds(resolved.model_dump(mode="json"))


def job_out(job: Job) -> schemas.Job:
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
        webhook_url=job.webhook_url,
        webhook_events=(job.webhook_events or list(webhooks.EVENTS)) if job.webhook_url else None,
        seed=job.seed,
        teacher=job.teacher,
        spec=job.spec,
        error=error,
        attempts=job.attempts,
        metrics=job.metrics,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        updated_at=job.updated_at,
    )


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


def _replay(session: Session, key: str, request_hash: str, tenant_id: str | None) -> Job | None:
    existing = repo.find_by_idempotency_key(session, key, tenant_id)
    if existing is None:
        return None
    if existing.request_hash != request_hash:
        raise invalid("idempotency_key_reused", f"Idempotency-Key {key!r} was used for a different request", {"job_id": existing.id}, 409)
    return existing


def check_quota(session: Session, tenant_id: str | None, settings: Settings, *, lock: bool = False) -> None:
    active = repo.count_active_jobs(session, tenant_id, lock=lock)
    if active >= settings.max_active_jobs_per_tenant:
        raise repo.ServiceError(
            "too_many_active_jobs",
            f"{active} jobs are queued or running; at most {settings.max_active_jobs_per_tenant} per tenant. Retry when one ends.",
            429,
            {"limit": settings.max_active_jobs_per_tenant, "active": active},
            headers={"Retry-After": str(settings.quota_retry_after_seconds)},
        )


def store_job(
    submission: Submission,
    key: str | None,
    session_factory: sessionmaker[Session],
    storage: Storage,
    tenant_id: str | None,
    settings: Settings,
) -> tuple[Job, bool]:
    """Store the uploads, then the job row; (job, created). A replayed key answers the first job (quota or not).

    The row is flagged for publication (the outbox): should this process die before the caller publishes the message,
    the reaper publishes it after ``publish_grace_seconds``."""
    with session_scope(session_factory) as session:
        if key is not None:
            existing = _replay(session, key, submission.request_hash, tenant_id)
            if existing is not None:
                return existing, False
        check_quota(session, tenant_id, settings)  # before any upload is written
    job_id = repo.new_id("job")
    uploads: list[repo.NewUpload] = []
    spec = submission.spec
    try:
        for image in submission.images:
            upload_id = repo.new_id("upl")
            stored = storage.put(upload_key(job_id, upload_id), image.content)
            uploads.append(
                repo.NewUpload(
                    image.class_name, image.position, image.filename, image.content_type, image.width, image.height, stored, upload_id
                )
            )
        ids: dict[str, list[str]] = {}
        for upload in uploads:
            ids.setdefault(upload.class_name, []).append(upload.id)
        spec = {**spec, "classes": [{**c, "images": ids.get(c["name"], [])} for c in spec["classes"]]}
        with session_scope(session_factory) as session:
            check_quota(session, tenant_id, settings, lock=True)  # again, in the transaction that adds the job
            job = repo.create_job(
                session,
                job_id=job_id,
                spec=spec,
                uploads=uploads,
                idempotency_key=key,
                request_hash=submission.request_hash,
                tenant_id=tenant_id,
                publish_grace_seconds=settings.publish_grace_seconds,
                estimated_seconds=estimated_duration(spec, settings),
                webhook_url=submission.webhook_url,
                webhook_events=submission.webhook_events,
            )
        return job, True
    except IntegrityError:
        # Two requests with one key raced: the other one won.
        for prefix in job_prefixes(job_id):
            storage.delete_prefix(prefix)
        with session_scope(session_factory) as session:
            existing = _replay(session, key or "", submission.request_hash, tenant_id)
            if existing is None:
                raise
            return existing, False
    except BaseException:
        for prefix in job_prefixes(job_id):
            storage.delete_prefix(prefix)
        raise


def withdraw_job(job_id: str, session_factory: sessionmaker[Session], storage: Storage) -> None:
    """Remove a just-created job whose message was not published: its rows, then its uploads."""
    with session_scope(session_factory) as session:
        prefixes = repo.delete_job(session, job_id)
    for prefix in prefixes:
        storage.delete_prefix(prefix)


def store_and_publish(
    submission: Submission,
    key: str | None,
    session_factory: sessionmaker[Session],
    storage: Storage,
    queue: Celery,
    tenant_id: str | None,
    settings: Settings,
) -> tuple[Job, bool]:
    """Store a new job and publish its message; (job, created). A replayed key publishes nothing."""
    try:
        job, created = store_job(submission, key, session_factory, storage, tenant_id, settings)
    except StorageError as exc:
        raise invalid(exc.code, f"the uploads could not be stored: {exc}", status=507 if isinstance(exc, StorageFull) else 503) from None
    if not created:
        return job, False
    assert job.publish_due_at is not None  # create_job flags every new job
    try:
        publish_job(queue, settings, session_factory, job.id, job.publish_due_at)
    except BrokerUnavailable as exc:
        # Roll the job back rather than keep a queued row that the client was told failed: it retries (503), with the
        # same Idempotency-Key if it sent one, and that retry creates the job afresh.
        withdraw_job(job.id, session_factory, storage)
        raise invalid("broker_unavailable", f"the job could not be queued; try again: {exc}", status=503) from None
    return job, True


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
        store_and_publish, submission, idempotency_key, factory, storage, queue, principal.tenant_id, settings
    )
    if created:
        request.app.state.metrics.submitted.inc()
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
        with session_scope(factory) as session:
            job = repo.get_job(session, job.id)
    return JSONResponse(job_out(job).model_dump(mode="json"), status_code=201, headers=headers)


@router.get("", response_model=schemas.JobPage, responses=ERRORS)
def get_jobs(
    session: SessionDep,
    principal: PrincipalDep,
    status: Annotated[schemas.JobStatus | None, Query()] = None,
    after: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> schemas.JobPage:
    if after is not None and not repo.is_id(after, "job"):  # a job id is the only valid job-list cursor
        raise invalid("invalid_cursor", f"after={after[:40]!r} is not a cursor: pass a page's next_after (a job id)", status=400)
    page, has_more = repo.list_jobs(session, status=status, after=after, limit=limit, tenant_id=principal.tenant_id)
    return schemas.JobPage(data=[job_out(j) for j in page], has_more=has_more, next_after=page[-1].id if has_more and page else None)


def read_job(session_factory: sessionmaker[Session], job_id: str, tenant_id: str | None) -> schemas.Job:
    with session_scope(session_factory) as session:
        return job_out(repo.get_job(session, job_id, tenant_id))


@router.get("/{job_id}", response_model=schemas.Job, responses=ERRORS)
async def get_job(job_id: str, request: Request, principal: PrincipalDep) -> schemas.Job:
    # Clients poll this: one primary-key read, done on the event loop. A worker-thread hop per request costs more CPU
    # than the query and, under GIL contention, adds tens of ms of tail latency (bench/results/load.md).
    return read_job(request.app.state.session_factory, job_id, principal.tenant_id)


@router.post("/{job_id}/cancel", response_model=schemas.Job, responses=ERRORS)
def cancel_job(job_id: str, session: SessionDep, principal: PrincipalDep) -> schemas.Job:
    job = repo.request_cancel(session, job_id, principal.tenant_id)
    session.commit()  # before the answer: the session dependency's own commit runs after the response is sent
    return job_out(job)


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
    await run_in_threadpool(read_job, factory, job_id, principal.tenant_id)  # 404 before streaming
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
        raise repo.ServiceError("range_not_satisfiable", message, 416, headers={"Content-Range": f"bytes */{size}"})
    return start, end


# {name:path}: a name holding (encoded) slashes still reaches the handler, to be refused with a clear code, not a bare 404.
ARTIFACT_RESPONSES = {
    **ERRORS,
    200: {"content": {"application/octet-stream": {}}},
    206: {"description": "a single byte range"},
    307: {"description": "with CLIPFORGE_STORAGE_PRESIGNED_DOWNLOADS on: the object store's presigned URL (Location)"},
    416: {"model": schemas.ErrorBody},
}


@router.get("/{job_id}/artifacts/{name:path}", responses=ARTIFACT_RESPONSES)
@router.head("/{job_id}/artifacts/{name:path}", responses=ARTIFACT_RESPONSES, operation_id="head_artifact")
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


STREAM_QUERY = Query(description="always stream the bytes through the API, even with presigned downloads on (the web console)")


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
