"""GET /v1/students: the student architectures the worker can distil into (core.student_catalog's entries)."""

from __future__ import annotations

from fastapi import APIRouter

from api import schemas
from core.student_catalog import student_entry, student_names

router = APIRouter(prefix="/v1/students", tags=["students"])


@router.get("", response_model=schemas.StudentList)
def get_students() -> schemas.StudentList:
    return schemas.StudentList(data=[_student(name) for name in student_names()])


def _student(name: str) -> schemas.Student:
    entry = student_entry(name)
    facts = {"mflops": entry.mflops, "parameters": entry.parameters, "export_formats": list(entry.export_formats)}
    return schemas.Student(name=name, description=entry.description, **facts)
