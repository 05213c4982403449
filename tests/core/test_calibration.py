"""The student's "unknown" answer (core.calibration): the temperature, the out-of-class images the teacher picks from its
vocabulary, the threshold the model card stores, and the runtime's verdict at it."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from clipforge_runtime import Student
from core.calibration import fit_temperature, out_of_class_images
from core.pipeline import ONNX_FILE, customize, prepare
from core.spec import CustomizeSpec

SPEC = {
    "teacher": "shapes-mini",
    "classes": ["circle", "square"],
    "synthesis": {"images_per_class": 16, "batch_size": 32},
    "distillation": {"steps": 40, "batch_size": 32},
    "student": {"arch": "tiny_cnn"},
    "export": {"formats": ["onnx"], "unknown": {"false_accept_rate": 0.1, "in_class_per_class": 8}},
    "seed": 1,
}
FALSE_ACCEPT_RATE = 0.1


def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_at():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 5)) * 4
    scaled = np.exp(logits / 2.0 - (logits / 2.0).max(1, keepdims=True))
    labels = np.array([rng.choice(5, p=row / row.sum()) for row in scaled])
    assert 1.7 < fit_temperature(logits, labels) < 2.4


def test_out_of_class_images_are_what_the_teacher_takes_for_other_names(shapes_teacher):
    preparation = prepare(CustomizeSpec.model_validate(SPEC), shapes_teacher)
    images, names = out_of_class_images(shapes_teacher, preparation.targets, ["circle", "square"], preparation.synthesis, seed=1)
    assert names == 6 and len(images) >= 50  # the six other shapes of the teacher's vocabulary
    shape8 = shapes_teacher.encode_text([f"a photo of a {s}." for s in shapes_teacher.vocabulary])
    top = shapes_teacher.classify(images, shape8).argmax(1)
    assert not bool(torch.isin(top, torch.tensor([0, 1])).any())  # none of them the job's own circle or square
    # A job whose classes are every name the teacher knows has no out-of-class texts.
    _, none = out_of_class_images(shapes_teacher, preparation.targets, list(shapes_teacher.vocabulary), preparation.synthesis, seed=1)
    assert none == 0


def test_the_card_stores_a_threshold_the_runtime_applies(shapes_teacher, tmp_path):
    result = customize(CustomizeSpec.model_validate(SPEC), shapes_teacher)
    unknown = result.metrics["unknown"]
    assert unknown["available"] and unknown["false_accept_rate"] == FALSE_ACCEPT_RATE and 0 < unknown["threshold_probability"] < 1
    assert unknown["out_of_class_names"] == 6 and unknown["in_class_images"] == 2 * 8 and 0 <= unknown["in_class_refused"] <= 1
    card = json.loads(result.artifacts["model_card.json"])
    assert card["unknown"] == unknown
    path = tmp_path / ONNX_FILE
    path.write_bytes(result.artifacts[ONNX_FILE])
    student = Student.load(path)
    assert (student.unknown_threshold, student.temperature) == (unknown["threshold"], unknown["temperature"])
    # On the out-of-class images it was calibrated on, the runtime refuses all but about the false-accept rate.
    preparation = prepare(CustomizeSpec.model_validate(SPEC), shapes_teacher)
    images, _ = out_of_class_images(shapes_teacher, preparation.targets, ["circle", "square"], preparation.synthesis, seed=1)

    pictures = [Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for image in images]
    verdicts = [p.unknown for p in student.predict(pictures, unknown=True)]
    assert all(v is not None for v in verdicts) and np.mean(verdicts) >= 1 - FALSE_ACCEPT_RATE - 0.05
    assert all(p.unknown is None for p in student.predict(pictures[:3]))  # off unless asked


def test_a_job_that_asks_for_no_unknown_answer_gets_a_card_that_says_so(shapes_teacher, tmp_path):
    spec = {**SPEC, "synthesis": {"images_per_class": 4, "batch_size": 8}, "distillation": {"steps": 4, "batch_size": 8}}
    spec["export"] = {"formats": ["onnx"], "unknown": {"enabled": False}}
    result = customize(CustomizeSpec.model_validate(spec), shapes_teacher)
    assert result.metrics["unknown"] == {"available": False, "reason": "not asked for (export.unknown.enabled is false)"}
    path = tmp_path / ONNX_FILE
    path.write_bytes(result.artifacts[ONNX_FILE])
    student = Student.load(path)
    assert student.unknown_threshold is None and student.predict([Image.new("RGB", (8, 8))], unknown=True)[0].unknown is None
