"""Image pools: a tenant's unlabelled images from their own domain (create, list, read, delete, the thumbnail grid)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api import schemas
from api.archives import ARCHIVE_FIELD, IMAGES_FIELD, unlabelled_images
from api.deps import PrincipalDep, SessionDep, SettingsDep, StorageDep
from api.files import FILE_RESPONSES, STREAM_QUERY, stored_file_response
from api.multipart import multipart_body, read_image_form
from api.validation import DecodedImage, invalid
from service import pools as repo
from service.models import Pool
from service.settings import Settings

router = APIRouter(prefix="/v1/pools", tags=["pools"])
ERRORS = schemas.ERROR_RESPONSES
NAME_FIELD = "name"
MAX_NAME = 200

CREATE_BODY = multipart_body(
    {
        IMAGES_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "images"},
        ARCHIVE_FIELD: {"type": "string", "format": "binary", "description": "a zip of images, any folder layout"},
        NAME_FIELD: {"type": "string", "maxLength": MAX_NAME, "description": "a label for the pool"},
    },
    "unlabelled images as files named 'images', and/or one zip named 'archive'",
)


def pool_out(pool: Pool, jobs_using: list[str]) -> schemas.Pool:
    return schemas.Pool(
        id=pool.id,
        name=pool.name,
        image_count=pool.image_count,
        duplicates=pool.duplicates,
        bytes=pool.bytes,
        thumbnails_url=f"/v1/pools/{pool.id}/{repo.THUMBNAILS_FILE}",
        jobs_using=jobs_using,
        created_at=pool.created_at,
    )


def _checked(files: list[tuple[str, str | None, bytes]], settings: Settings) -> list[DecodedImage]:
    return unlabelled_images(files, settings, max_images=settings.max_pool_images)


@router.post("", status_code=201, response_model=schemas.Pool, responses=ERRORS, openapi_extra={"requestBody": CREATE_BODY})
async def create_pool(request: Request, settings: SettingsDep, storage: StorageDep, principal: PrincipalDep) -> JSONResponse:
    """A pool of the caller's unlabelled images: ``images`` files and/or one ``archive`` zip, checked as uploads are."""
    fields, files = await read_image_form(
        request,
        settings,
        max_files=settings.max_pool_images + 1,
        text_fields=(NAME_FIELD,),
        archive_field=ARCHIVE_FIELD,
        hint="send 'images' files or one 'archive' zip, and optionally a 'name'",
    )
    name = (fields.get(NAME_FIELD) or "").strip() or None
    if name is not None and len(name) > MAX_NAME:
        raise invalid("invalid_name", f"a pool's name is at most {MAX_NAME} characters", {"limit": MAX_NAME})
    images = await run_in_threadpool(_checked, files, settings)
    factory = request.app.state.session_factory
    pool = await run_in_threadpool(repo.create, images, name, principal.tenant_id, factory, storage)
    headers = {"Location": f"/v1/pools/{pool.id}"}
    return JSONResponse(pool_out(pool, []).model_dump(mode="json"), status_code=201, headers=headers)


@router.get("", response_model=schemas.PoolList, responses=ERRORS)
def list_pools(session: SessionDep, principal: PrincipalDep) -> schemas.PoolList:
    return schemas.PoolList(data=[pool_out(p, repo.jobs_using(session, p.id)) for p in repo.list_for_tenant(session, principal.tenant_id)])


@router.get("/{pool_id}", response_model=schemas.Pool, responses=ERRORS)
def get_pool(pool_id: str, session: SessionDep, principal: PrincipalDep) -> schemas.Pool:
    pool = repo.get(session, pool_id, principal.tenant_id)
    return pool_out(pool, repo.jobs_using(session, pool.id))


@router.delete("/{pool_id}", status_code=204, responses=ERRORS)
def delete_pool(pool_id: str, session: SessionDep, storage: StorageDep, principal: PrincipalDep) -> Response:
    """Refused (409 ``pool_in_use``) while a queued or running job reads it."""
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
