"""GET /v1/teachers: the teachers jobs may name (bundled, cached and configured)."""

from __future__ import annotations

from fastapi import APIRouter

from api import schemas
from api.deps import SettingsDep
from service.catalog import list_teachers

router = APIRouter(prefix="/v1/teachers", tags=["teachers"])


@router.get("", response_model=schemas.TeacherList)
def get_teachers(settings: SettingsDep) -> schemas.TeacherList:
    entries = list_teachers(settings.cache_dir, settings.extra_teachers)
    return schemas.TeacherList(
        data=[
            schemas.Teacher(
                name=e.name, source=e.source, image_size=e.image_size, description=e.description, default=e.name == settings.default_teacher
            )
            for e in entries
        ]
    )
