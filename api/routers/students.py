"""GET /v1/students: the student architectures the worker can distil into."""

from __future__ import annotations

from fastapi import APIRouter

from api import schemas
from service.catalog import STUDENT_DESCRIPTIONS, student_names

router = APIRouter(prefix="/v1/students", tags=["students"])


@router.get("", response_model=schemas.StudentList)
def get_students() -> schemas.StudentList:
    return schemas.StudentList(
        data=[schemas.Student(name=name, description=STUDENT_DESCRIPTIONS.get(name, name)) for name in student_names()]
    )
