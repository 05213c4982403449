"""Image pools: a tenant's unlabelled images from their own domain (create, list, read, delete, the thumbnail grid); one
created with a ``teacher`` has that teacher's embeddings of it built by a worker before any job uses it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api import schemas
from api.archives import ARCHIVE_FIELD, IMAGES_FIELD, unlabelled_images
from api.deps import PrincipalDep, QueueDep, SessionDep, SettingsDep, StorageDep
from api.files import FILE_RESPONSES, STREAM_QUERY, stored_file_response
from api.multipart import multipart_body, read_image_form
from api.validation import DecodedImage, invalid, known_teacher
from core.spec import SynthesisSpec
from service import pool_embeddings, submissions
from service import pools as repo
from service.models import Pool, PoolEmbedding
from service.settings import Settings

router = APIRouter(prefix="/v1/pools", tags=["pools"])
ERRORS = schemas.ERROR_RESPONSES
NAME_FIELD = "name"
MAX_NAME = 200
TEACHER_FIELD = "teacher"
MAX_TEACHER = 300  # as a job spec's teacher
VIEWS_FIELD = "views"
# The views of a pool embedding are a job's synthesis.pool_views (core.spec), bounds and default alike.
POOL_VIEWS = SynthesisSpec.model_fields["pool_views"]
MIN_VIEWS = next(m.ge for m in POOL_VIEWS.metadata if getattr(m, "ge", None) is not None)
MAX_VIEWS = next(m.le for m in POOL_VIEWS.metadata if getattr(m, "le", None) is not None)

CREATE_BODY = multipart_body(
    {
        IMAGES_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "images"},
        ARCHIVE_FIELD: {"type": "string", "format": "binary", "description": "a zip of images, any folder layout"},
        NAME_FIELD: {"type": "string", "maxLength": MAX_NAME, "description": "a label for the pool"},
        TEACHER_FIELD: {
            "type": "string",
            "maxLength": MAX_TEACHER,
            "description": "a teacher (GET /v1/teachers) whose embeddings of the pool a worker builds now, before any job uses it",
        },
        VIEWS_FIELD: {
            "type": "integer",
            "minimum": MIN_VIEWS,
            "maximum": MAX_VIEWS,
            "description": f"with a teacher: augmented views per image, the pool_views of the jobs to come ({POOL_VIEWS.default})",
        },
    },
    "unlabelled images as files named 'images', and/or one zip named 'archive'",
)


def embedding_out(embedding: PoolEmbedding) -> schemas.PoolEmbedding:
    error = schemas.JobError(code=embedding.error_code, message=embedding.error_message) if embedding.error_code else None
    return schemas.PoolEmbedding(
        id=embedding.id,
        teacher=embedding.teacher,
        views=embedding.views,
        status=embedding.status,  # type: ignore[arg-type]
        result=schemas.PoolEmbeddingResult.model_validate(embedding.result) if embedding.result else None,
        error=error,
        attempts=embedding.attempts,
        created_at=embedding.created_at,
        started_at=embedding.started_at,
        finished_at=embedding.finished_at,
    )


def pool_out(pool: Pool, jobs_using: list[str], embeddings: list[PoolEmbedding]) -> schemas.Pool:
    return schemas.Pool(
        id=pool.id,
        name=pool.name,
        image_count=pool.image_count,
        duplicates=pool.duplicates,
        bytes=pool.bytes,
        thumbnails_url=f"/v1/pools/{pool.id}/{repo.THUMBNAILS_FILE}",
        jobs_using=jobs_using,
        embeddings=[embedding_out(e) for e in embeddings],
        created_at=pool.created_at,
    )


def requested_embedding(fields: dict[str, str], settings: Settings) -> tuple[str, int] | None:
    """The form's teacher (checked against the catalogue as a job's is) and views, or None without a teacher."""
    teacher = (fields.get(TEACHER_FIELD) or "").strip() or None
    raw_views = (fields.get(VIEWS_FIELD) or "").strip() or None
    if teacher is None:
        if raw_views is not None:
            raise invalid("invalid_views", "views are a teacher's: send a 'teacher' with them", {"field": VIEWS_FIELD})
        return None
    if len(teacher) > MAX_TEACHER:
        raise invalid("unknown_teacher", f"a teacher's name is at most {MAX_TEACHER} characters", {"limit": MAX_TEACHER})
    known_teacher(teacher, settings)
    views = POOL_VIEWS.default
    if raw_views is not None:
        try:
            views = int(raw_views)
        except ValueError:
            views = None
        if views is None or not MIN_VIEWS <= views <= MAX_VIEWS:
            message = f"views is a whole number from {MIN_VIEWS} to {MAX_VIEWS}, not {raw_views[:20]!r}"
            raise invalid("invalid_views", message, {"field": VIEWS_FIELD, "min": MIN_VIEWS, "max": MAX_VIEWS})
    return teacher, views


def _checked(files: list[tuple[str, str | None, bytes]], settings: Settings) -> list[DecodedImage]:
    return unlabelled_images(files, settings, max_images=settings.max_pool_images)


@router.post("", status_code=201, response_model=schemas.Pool, responses=ERRORS, openapi_extra={"requestBody": CREATE_BODY})
async def create_pool(
    request: Request, settings: SettingsDep, storage: StorageDep, queue: QueueDep, principal: PrincipalDep
) -> JSONResponse:
    """A pool of the caller's unlabelled images: ``images`` files and/or one ``archive`` zip, checked as uploads are. With
    a ``teacher`` (and ``views``), a worker builds that teacher's embeddings of the pool now (``embeddings``), so that its
    first job loads them instead of running the teacher on it."""
    fields, files = await read_image_form(
        request,
        settings,
        max_files=settings.max_pool_images + 1,
        text_fields=(NAME_FIELD, TEACHER_FIELD, VIEWS_FIELD),
        archive_field=ARCHIVE_FIELD,
        hint="send 'images' files or one 'archive' zip, and optionally a 'name', a 'teacher' and its 'views'",
    )
    name = (fields.get(NAME_FIELD) or "").strip() or None
    if name is not None and len(name) > MAX_NAME:
        raise invalid("invalid_name", f"a pool's name is at most {MAX_NAME} characters", {"limit": MAX_NAME})
    embedding = await run_in_threadpool(requested_embedding, fields, settings)  # the catalogue reads folders
    images = await run_in_threadpool(_checked, files, settings)
    factory = request.app.state.session_factory
    pool, embeddings = await run_in_threadpool(
        submissions.submit_pool, images, name, principal.tenant_id, embedding, factory, storage, queue, settings
    )
    headers = {"Location": f"/v1/pools/{pool.id}"}
    return JSONResponse(pool_out(pool, [], embeddings).model_dump(mode="json"), status_code=201, headers=headers)


@router.get("", response_model=schemas.PoolList, responses=ERRORS)
def list_pools(session: SessionDep, principal: PrincipalDep) -> schemas.PoolList:
    found = repo.list_for_tenant(session, principal.tenant_id)
    embeddings = pool_embeddings.list_for_pools(session, [p.id for p in found])
    return schemas.PoolList(data=[pool_out(p, repo.jobs_using(session, p.id), embeddings[p.id]) for p in found])


@router.get("/{pool_id}", response_model=schemas.Pool, responses=ERRORS)
def get_pool(pool_id: str, session: SessionDep, principal: PrincipalDep) -> schemas.Pool:
    pool = repo.get(session, pool_id, principal.tenant_id)
    return pool_out(pool, repo.jobs_using(session, pool.id), pool_embeddings.list_for_pools(session, [pool.id])[pool.id])


@router.delete("/{pool_id}", status_code=204, responses=ERRORS)
def delete_pool(pool_id: str, session: SessionDep, storage: StorageDep, principal: PrincipalDep) -> Response:
    """Refused (409 ``pool_in_use``) while a queued or running job, or embedding of it, reads it."""
    prefix = repo.delete_one(session, pool_id, principal.tenant_id)
    session.commit()  # before the files go: a failed commit loses none
    storage.delete_prefix(prefix)
    return Response(status_code=204)


@router.get(f"/{{pool_id}}/{repo.THUMBNAILS_FILE}", responses=FILE_RESPONSES)
@router.head(f"/{{pool_id}}/{repo.THUMBNAILS_FILE}", responses=FILE_RESPONSES, operation_id="head_pool_thumbnails")
def get_thumbnails(
    pool_id: str,
    session: SessionDep,
    storage: StorageDep,
    request: Request,
    principal: PrincipalDep,
    stream: Annotated[bool, STREAM_QUERY] = False,
) -> Response:
    """A PNG grid of the pool's first images."""
    pool = repo.get(session, pool_id, principal.tenant_id)
    thumbnails = repo.Thumbnails.of(pool)
    return stored_file_response(request, storage, thumbnails, f"the thumbnails of pool {pool_id!r}", stream=stream)
