"""How well a student's "unknown" answer works on real images: `clipforge bench unknown`.

The student (its ONNX file and the calibration in its model card, core.calibration) on held-out real images of its own
classes and of classes outside the job: the share of out-of-class images refused at the stored threshold, and the
in-class accuracy with and without the unknown answer (what the refusals cost)."""

from __future__ import annotations

import numpy as np

from bench.tasks import get_task
from clipforge_runtime import Student, top_log_odds


def _calibrated(student: Student, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = student.logits(pixels)
    return logits.argmax(1), top_log_odds(logits, student.temperature)


def measure_unknown(onnx_path: str, in_task: str, out_task: str, *, split: str = "test", images: int = 2000) -> dict[str, object]:
    student = Student.load(onnx_path)
    if student.unknown_threshold is None:
        raise ValueError(f"{onnx_path}: its model card has no unknown calibration ({student.card.get('unknown')})")
    inside, outside = get_task(in_task), get_task(out_task)
    if list(inside.class_texts) != student.classes:
        raise ValueError(f"the student's classes {student.classes} are not {in_task}'s {list(inside.class_texts)}")
    in_pixels, in_labels = inside.render(split, images, size=student.image_size)  # type: ignore[arg-type]
    out_pixels, _ = outside.render(split, images, size=student.image_size)  # type: ignore[arg-type]
    predicted, in_scores = _calibrated(student, in_pixels.numpy())
    _, out_scores = _calibrated(student, out_pixels.numpy())
    threshold = student.unknown_threshold
    correct = predicted == in_labels.numpy()
    accepted = in_scores >= threshold
    return {
        "student": onnx_path,
        "in_task": in_task,
        "out_task": out_task,
        "split": split,
        "images_each": images,
        "threshold": threshold,
        "temperature": student.temperature,
        "calibration": student.card.get("unknown"),
        "out_of_class_refused": round(float((out_scores < threshold).mean()), 4),
        "in_class_accuracy": round(float(correct.mean()), 4),
        "in_class_accuracy_with_unknown": round(float((correct & accepted).mean()), 4),
        "in_class_refused": round(float((~accepted).mean()), 4),
    }
