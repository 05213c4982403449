"""The student architectures, one registry entry each: what the spec accepts, the catalogue lists, the estimate prices,
the exporters promise, and how the engine builds it. Adding a student is one ``STUDENTS.add`` here (and, for a new
architecture, its builder function in ``core.students``).

Importing this module must never import torch: the API validates, lists and prices students with it. An entry names
its builder as ``"module:function"`` and imports it only when a student is built (``create_student`` in
``core.students``, which registers nothing of its own).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.registry import Registry

if TYPE_CHECKING:
    from torch import nn

EXPORT_FORMATS: tuple[str, ...] = ("onnx", "torchscript", "onnx_int8", "openvino", "tflite")  # core.spec.ExportFormat's values


@dataclass(frozen=True)
class StudentEntry:
    """One student architecture and its facts. Called as a registry factory, ``entry(num_classes=, image_size=)``, it
    imports its builder and returns a randomly initialised backbone mapping *normalised* pixels to logits."""

    description: str  # one line for GET /v1/students and the CLI
    builder: str  # "module:function"; the function takes (num_classes, image_size) and returns an nn.Module
    # Cost (core.estimate): forward + backward seconds per image on the reference CPU (2 cores, 32 px); None: no
    # reference measurement, so a job with this student gets no estimate before it runs.
    train_seconds_per_image: float | None
    mflops: float  # forward FLOPs (multiply-accumulate = 2) per 32 px image with 10 classes (core.students.count_flops)
    parameters: int  # at 32 px with 10 classes (core.students.count_parameters)
    # Export: the formats of core.spec.ExportFormat this architecture exports to and passes its parity check in
    # (tests/core/test_students.py exports every student in each); a spec asking for another is refused at submission.
    export_formats: tuple[str, ...] = EXPORT_FORMATS

    def __call__(self, *, num_classes: int, image_size: int) -> nn.Module:
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)(num_classes, image_size)


# Costs measured with bench-style timing loops on the reference machine (2026-11-29; small_cnn with its introduction).
STUDENTS: Registry[Any] = Registry("student")
STUDENTS.add(
    "resnet18",
    StudentEntry(
        "ResNet-18 with a small-input stem (the paper's student)",
        "core.students:build_resnet18",
        train_seconds_per_image=12.5e-3,
        mflops=1110.8,
        parameters=11_173_962,
    ),
)
STUDENTS.add(
    "mobilenet_v3_small",
    StudentEntry(
        "MobileNetV3-Small",
        "core.students:build_mobilenet_v3_small",
        train_seconds_per_image=1.5e-3,
        mflops=11.0,
        parameters=1_528_106,
    ),
)
STUDENTS.add(
    "tiny_cnn",
    StudentEntry(
        "a four-layer CNN, ~100k parameters (the cpu budget's default)",
        "core.students:build_tiny_cnn",
        train_seconds_per_image=0.25e-3,
        mflops=8.0,
        parameters=98_970,
    ),
)
STUDENTS.add(
    "small_cnn",
    StudentEntry(
        "tiny_cnn with a residual layer at its two lowest resolutions, ~280k parameters",
        "core.students:build_small_cnn",
        train_seconds_per_image=0.41e-3,
        mflops=17.4,
        parameters=283_674,
    ),
)


def student_entry(name: str) -> StudentEntry:
    """The entry of student ``name``; UnknownNameError (code ``unknown_student``) for a name no entry answers to."""
    entry = STUDENTS.get(name)
    assert isinstance(entry, StudentEntry)
    return entry


def student_names() -> list[str]:
    """The students in registration order (the catalogue's order)."""
    return [name for name, _ in STUDENTS.items()]
