"""Predictions: a succeeded job's ONNX student on one to a few images, answered at once by the API process itself."""

from __future__ import annotations

import io
from typing import Annotated

from fastapi import APIRouter, Query, Request
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api import schemas
from api.archives import ARCHIVE_FIELD, unlabelled_images
from api.deps import PrincipalDep, SettingsDep, StorageDep
from api.multipart import multipart_body, read_image_form
from api.validation import invalid
from core.artifacts import ONNX_FILE
from service import evaluations, jobs
from service.db import session_scope
from service.settings import Settings
from service.storage import Storage

router = APIRouter(prefix="/v1/jobs/{job_id}/predictions", tags=["predictions"])
ERRORS = schemas.ERROR_RESPONSES
MAX_TOP_K = 20

SUBMIT_BODY = multipart_body(
    {"images": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "one to a few images"}},
    "images as files named 'images' (or one zip named 'archive')",
)


def _student_file(factory: sessionmaker[Session], job_id: str, tenant_id: str | None) -> tuple[str, str]:
    """(storage key, sha256) of the job's ONNX student; 404 for another tenant's job, 409 unless it succeeded with one."""
    with session_scope(factory) as session:
        evaluations.evaluable_job(session, job_id, tenant_id)
        for artifact in jobs.list_artifacts(session, job_id):
            if artifact.name == ONNX_FILE:
                return artifact.storage_key, artifact.sha256
    raise invalid("no_onnx_student", f"job {job_id!r} exported no {ONNX_FILE} (its spec's export.formats); predictions run it", status=409)


def _predict(request: Request, key: str, sha256: str, images: list, top_k: int, storage: Storage) -> schemas.PredictionList:
    student = request.app.state.students.get(sha256, lambda: storage.read(key))
    pictures = [Image.open(io.BytesIO(image.content)) for image in images]
    try:
        predicted = student.predict(pictures, top_k=top_k, unknown=True)
    finally:
        for picture in pictures:
            picture.close()
    return schemas.PredictionList(
        classes=student.classes,
        predictions=[
            schemas.Prediction(
                filename=image.filename,
                label=prediction.label,
                unknown=prediction.unknown,
                unknown_score=prediction.unknown_score,
                unknown_threshold=prediction.unknown_threshold,
                top=[schemas.ClassProbability(name=name, probability=round(p, 6)) for name, p in prediction.top],
            )
            for image, prediction in zip(images, predicted, strict=True)
        ],
    )


@router.post("", response_model=schemas.PredictionList, responses=ERRORS, openapi_extra={"requestBody": SUBMIT_BODY})
async def predict(
    job_id: str,
    request: Request,
    settings: SettingsDep,
    storage: StorageDep,
    principal: PrincipalDep,
    top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K, description="classes per image, most likely first")] = 3,
) -> schemas.PredictionList:
    """The job's student's top classes for each image (1 to ``max_prediction_images``), at once: no worker, no queue."""
    key, sha256 = await run_in_threadpool(_student_file, request.app.state.session_factory, job_id, principal.tenant_id)
    _, files = await read_image_form(
        # A few parts beyond the limit are read, so that a request over it is told too_many_images, not a parser's error.
        request, settings, max_files=2 * settings.max_prediction_images + 1, text_fields=(), archive_field=ARCHIVE_FIELD,
        hint="send 'images' files or one 'archive' zip",
    )  # fmt: skip
    images = await run_in_threadpool(unlabelled_images, files, settings, max_images=settings.max_prediction_images, per="request")
    request.app.state.prediction_rate.take(principal.tenant_id, len(images))
    return await run_in_threadpool(_predict, request, key, sha256, images, top_k, storage)


def prediction_state(settings: Settings) -> dict[str, object]:
    """What the app keeps for predictions (app.state): the students' sessions and the tenants' rates."""
    from api.predictions import PredictionRate, StudentSessions

    return {"students": StudentSessions(settings.prediction_sessions), "prediction_rate": PredictionRate(settings.predictions_per_minute)}
