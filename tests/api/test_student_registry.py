"""A student is one registry entry (core.student_catalog): once added, the API's validation, the catalogue
(GET /v1/students), the estimate and the engine all take it; taken out, none does."""

from __future__ import annotations

import pytest

from core.estimate import estimate_seconds
from core.spec import CustomizeSpec, resolve
from core.student_catalog import STUDENTS, StudentEntry, student_names
from core.students import create_student

NAME = "wide_tiny_cnn"
ENTRY = StudentEntry(
    "a test's temporary student (tiny_cnn's builder)",
    "core.students:build_tiny_cnn",
    train_seconds_per_image=0.5e-3,
    mflops=8.0,
    parameters=98_970,
    export_formats=("onnx",),
)


class _Teacher:
    name, paired_decoder = "shapes-mini", "shapes-vae"


@pytest.fixture
def temporary_student():
    STUDENTS.add(NAME, ENTRY)
    try:
        yield NAME
    finally:
        STUDENTS.remove(NAME)


def test_one_entry_makes_a_student_valid_listed_priced_and_buildable(http, temporary_student):
    listed = {s["name"]: s for s in http.get("/v1/students").json()["data"]}
    assert listed[NAME] == {"name": NAME, "description": ENTRY.description, "mflops": 8.0, "parameters": 98_970, "export_formats": ["onnx"]}
    body = {"classes": ["cat", "dog"], "student": {"arch": NAME}, "export": {"formats": ["onnx"]}}
    job = http.post("/v1/jobs", json=body)
    assert job.status_code == 201, job.text
    assert job.json()["spec"]["student"]["arch"] == NAME
    resolved = resolve(CustomizeSpec.model_validate(body), "cpu", _Teacher())
    tiny = resolve(CustomizeSpec.model_validate({**body, "student": {"arch": "tiny_cnn"}}), "cpu", _Teacher())
    priced, baseline = estimate_seconds(resolved.model_dump(mode="json")), estimate_seconds(tiny.model_dump(mode="json"))
    assert priced is not None and baseline is not None and priced > baseline  # its own cost: twice tiny_cnn's per image
    student = create_student(NAME, 3, 32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert student.arch == NAME and student.num_classes == 3


def test_an_entrys_export_facts_are_checked_at_submission(http, temporary_student):
    error = http.post("/v1/jobs", json={"classes": ["cat", "dog"], "student": {"arch": NAME}, "export": {"formats": ["onnx_int8"]}})
    assert error.status_code == 422
    body = error.json()["error"]
    assert body["code"] == "unsupported_export_format" and body["details"][0]["supported"] == ["onnx"]


def test_a_student_taken_out_is_unknown_everywhere(http):
    STUDENTS.add(NAME, ENTRY)
    STUDENTS.remove(NAME)
    assert NAME not in student_names() and NAME not in [s["name"] for s in http.get("/v1/students").json()["data"]]
    error = http.post("/v1/jobs", json={"classes": ["cat", "dog"], "student": {"arch": NAME}}).json()["error"]
    assert error["code"] == "unknown_student" and error["details"][0]["known"] == student_names()
