"""Evaluations of a succeeded job's student on the user's own labelled images: submit, list, read, delete, artifacts."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api import schemas
from api.archives import ARCHIVE_FIELD
from api.deps import PrincipalDep, QueueDep, SessionDep, SettingsDep, StorageDep
from api.evaluation_input import evaluation_input
from api.files import FILE_RESPONSES, STREAM_QUERY, check_artifact_name, stored_file_response
from api.multipart import multipart_body, read_image_form
from api.validation import invalid
from core.artifacts import ONNX_FILE
from service import evaluations as repo
from service import jobs, submissions
from service.db import session_scope
from service.models import Evaluation, EvaluationArtifact

log = logging.getLogger("clipforge.api")
router = APIRouter(prefix="/v1/jobs/{job_id}/evaluations", tags=["evaluations"])
ERRORS = schemas.ERROR_RESPONSES

SUBMIT_BODY = multipart_body(
    {ARCHIVE_FIELD: {"type": "string", "format": "binary", "description": "a zip with one folder of images per class"}},
    "labelled images as files named images[CLASS], and/or one zip named 'archive'",
)


def artifact_out(evaluation: Evaluation, artifact: EvaluationArtifact) -> schemas.Artifact:
    return schemas.Artifact(
        name=artifact.name,
        size=artifact.size,
        sha256=artifact.sha256,
        content_type=artifact.content_type,
        url=f"/v1/jobs/{evaluation.job_id}/evaluations/{evaluation.id}/artifacts/{artifact.name}",
        created_at=artifact.created_at,
    )


def evaluation_out(evaluation: Evaluation, artifacts: list[EvaluationArtifact]) -> schemas.Evaluation:
    error = schemas.JobError(code=evaluation.error_code, message=evaluation.error_message) if evaluation.error_code else None
    return schemas.Evaluation(
        id=evaluation.id,
        job_id=evaluation.job_id,
        status=evaluation.status,  # type: ignore[arg-type]
        error=error,
        counts=evaluation.counts,
        result=schemas.EvaluationResult.model_validate(evaluation.result) if evaluation.result else None,
        artifacts=[artifact_out(evaluation, a) for a in artifacts],
        attempts=evaluation.attempts,
        created_at=evaluation.created_at,
        started_at=evaluation.started_at,
        finished_at=evaluation.finished_at,
    )


def job_classes(factory: sessionmaker[Session], job_id: str, tenant_id: str | None) -> list[str]:
    """The job's class names; 404 for another tenant's job, 409 unless it succeeded with an ONNX student."""
    with session_scope(factory) as session:
        job = repo.evaluable_job(session, job_id, tenant_id)
        names = [c["name"] for c in job.spec["classes"]]
        if not any(a.name == ONNX_FILE for a in jobs.list_artifacts(session, job_id)):
            message = f"job {job_id!r} exported no {ONNX_FILE} (its spec's export.formats); evaluations score the ONNX student"
            raise invalid("no_onnx_student", message, status=409)
        return names


@router.post("", status_code=201, response_model=schemas.Evaluation, responses=ERRORS, openapi_extra={"requestBody": SUBMIT_BODY})
async def submit_evaluation(
    job_id: str, request: Request, settings: SettingsDep, storage: StorageDep, queue: QueueDep, principal: PrincipalDep
) -> JSONResponse:
    """Score the job's exported student (and its teacher) on labelled images: ``images[CLASS]`` files or one zip."""
    factory = request.app.state.session_factory
    class_names = await run_in_threadpool(job_classes, factory, job_id, principal.tenant_id)
    _, files = await read_image_form(
        request,
        settings,
        max_files=settings.max_evaluation_images,
        text_fields=(),
        archive_field=ARCHIVE_FIELD,
        hint="send images[CLASS] files or one 'archive' zip",
    )
    checked = await run_in_threadpool(evaluation_input, files, class_names, settings)
    evaluation = await run_in_threadpool(
        submissions.submit_evaluation, job_id, checked.images, checked.counts, factory, storage, queue, settings
    )
    headers = {"Location": f"/v1/jobs/{job_id}/evaluations/{evaluation.id}"}
    return JSONResponse(evaluation_out(evaluation, []).model_dump(mode="json"), status_code=201, headers=headers)


@router.get("", response_model=schemas.EvaluationList, responses=ERRORS)
def list_evaluations(job_id: str, session: SessionDep, principal: PrincipalDep) -> schemas.EvaluationList:
    jobs.get_job(session, job_id, principal.tenant_id)
    found = repo.list_for_job(session, job_id)
    artifacts = repo.artifacts(session, [e.id for e in found])
    return schemas.EvaluationList(data=[evaluation_out(e, artifacts[e.id]) for e in found])


@router.get("/{evaluation_id}", response_model=schemas.Evaluation, responses=ERRORS)
def get_evaluation(job_id: str, evaluation_id: str, session: SessionDep, principal: PrincipalDep) -> schemas.Evaluation:
    evaluation = repo.get(session, job_id, evaluation_id, principal.tenant_id)
    return evaluation_out(evaluation, repo.artifacts(session, [evaluation.id])[evaluation.id])


@router.delete("/{evaluation_id}", status_code=204, responses=ERRORS)
def delete_evaluation(job_id: str, evaluation_id: str, session: SessionDep, storage: StorageDep, principal: PrincipalDep) -> Response:
    prefixes = repo.delete_one(session, job_id, evaluation_id, principal.tenant_id)
    session.commit()  # before the files go: a failed commit loses none
    for prefix in prefixes:
        storage.delete_prefix(prefix)
    return Response(status_code=204)


@router.get("/{evaluation_id}/artifacts/{name:path}", responses=FILE_RESPONSES)
@router.head("/{evaluation_id}/artifacts/{name:path}", responses=FILE_RESPONSES, operation_id="head_evaluation_artifact")
def download_evaluation_artifact(
    job_id: str,
    evaluation_id: str,
    name: Annotated[str, Path()],
    session: SessionDep,
    storage: StorageDep,
    request: Request,
    principal: PrincipalDep,
    stream: Annotated[bool, STREAM_QUERY] = False,
) -> Response:
    """An evaluation's file (``confusion.png``, ``mistakes.png``, ``evaluation.json``); HEAD and Range as job artifacts."""
    check_artifact_name(name)
    repo.get(session, job_id, evaluation_id, principal.tenant_id)
    artifact = repo.get_artifact(session, evaluation_id, name)
    return stored_file_response(request, storage, artifact, f"artifact {name!r} of evaluation {evaluation_id!r}", stream=stream)
