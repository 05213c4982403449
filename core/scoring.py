"""Scoring a student and its teacher on labelled images: predictions, accuracy per class, confusion matrices.

The student is scored as users run it: the exported ONNX file under onnxruntime. The teacher is scored with the
zero-shot head that taught the student (the job's class prompts, example images included), so the two compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.export import run_onnx
from core.synthesis import ClassPrompts, build_targets
from core.teachers.base import Teacher

ONNX_BATCH = 256  # images per onnxruntime call: bounded memory whatever the evaluation's size


@dataclass(frozen=True)
class Scores:
    predictions: np.ndarray  # (N,) predicted class index
    accuracy: float
    per_class: list[float | None]  # None for a class without images
    confusion: np.ndarray  # (K, K) counts; rows: true class, columns: predicted


def score(predictions: np.ndarray, labels: np.ndarray, classes: int) -> Scores:
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    totals = confusion.sum(1)
    per_class = [float(confusion[k, k] / totals[k]) if totals[k] else None for k in range(classes)]
    accuracy = float((predictions == labels).mean()) if len(labels) else 0.0
    return Scores(predictions, accuracy, per_class, confusion)


def onnx_input_size(onnx_bytes: bytes) -> int:
    """The square side the exported student takes (its input's last dimension)."""
    import onnx

    model = onnx.load_model_from_string(onnx_bytes)
    return int(model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value)


def student_predictions(onnx_bytes: bytes, pixels: np.ndarray) -> np.ndarray:
    """Top class of the exported student for ``pixels`` (N, 3, S, S) in [0, 1], in batches."""
    return np.concatenate([run_onnx(onnx_bytes, pixels[i : i + ONNX_BATCH]).argmax(1) for i in range(0, len(pixels), ONNX_BATCH)])


@torch.no_grad()
def teacher_predictions(teacher: Teacher, prompts: Sequence[ClassPrompts], pixels: torch.Tensor) -> np.ndarray:
    """Top class of the teacher's zero-shot head built from the job's class prompts (``core.pipeline.class_prompts``),
    as the job built the head that taught the student (core.synthesis.build_targets)."""
    classifier = build_targets(teacher, prompts, []).classifier
    return teacher.classify(pixels.to(teacher.device), classifier).argmax(1).cpu().numpy()
