"""The torch-free runtime of an exported student: its model card read from the ONNX file, the one image preparation,
top-k predictions equal to onnxruntime's own, refusals with a code; and `clipforge predict` over it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge_runtime import Student, StudentFileError, prepare_image
from core.export import export_onnx, run_onnx
from core.images import to_pixels
from core.students import create_student

CLASSES = ["circle", "square", "star"]


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    torch.manual_seed(0)
    student = create_student("tiny_cnn", len(CLASSES), 32, mean=(0.5,) * 3, std=(0.25,) * 3).eval()
    card = {"classes": CLASSES, "input": {"shape": ["batch", 3, 32, 32]}}
    path = tmp_path_factory.mktemp("student") / "student.onnx"
    path.write_bytes(export_onnx(student, 32, metadata={"clipforge_model_card": json.dumps(card)}))
    return path


def _images(folder, count=5):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):  # odd sizes: resized and centre-cropped to the student's input
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_predictions_are_onnxruntimes_on_the_prepared_images(onnx_path, tmp_path):
    student = Student.load(onnx_path)
    assert student.classes == CLASSES and student.image_size == 32
    paths = _images(tmp_path / "images")
    predictions = student.predict(paths, top_k=2)
    pixels = np.stack([prepare_image(Image.open(p), 32) for p in paths])
    expected = run_onnx(onnx_path.read_bytes(), pixels)
    assert [p.label for p in predictions] == [CLASSES[k] for k in expected.argmax(1)]
    for prediction, logits in zip(predictions, expected, strict=True):
        probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert len(prediction.top) == 2 and prediction.top[0][1] == pytest.approx(probabilities.max(), abs=1e-6)
    # The engine's example images and evaluations go through the same preparation.
    with Image.open(paths[3]) as image:
        assert np.array_equal(to_pixels(image, 32).numpy(), prepare_image(image, 32))


def test_a_file_that_is_no_clipforge_student_is_refused(onnx_path, tmp_path):
    with pytest.raises(StudentFileError) as garbage:
        Student(b"not a model")
    assert garbage.value.code == "invalid_model"
    bare = create_student("tiny_cnn", 2, 32, mean=(0.5,) * 3, std=(0.25,) * 3).eval()
    with pytest.raises(StudentFileError, match="no 'clipforge_model_card'"):
        Student(export_onnx(bare, 32))


def test_the_runtime_never_imports_torch():
    code = "import sys, clipforge_runtime; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_clipforge_predict_prints_each_files_top_classes_and_refuses_with_codes(onnx_path, tmp_path):
    paths = _images(tmp_path / "folder" / "nested")
    run = [sys.executable, "-m", "cli.main", "predict", "--model", str(onnx_path)]
    result = subprocess.run([*run, str(tmp_path / "folder"), "--json", "--top-k", "3"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["classes"] == CLASSES and [p["source"] for p in document["predictions"]] == [str(p) for p in paths]
    expected = [p.to_json() for p in Student.load(onnx_path).predict(paths, top_k=3)]
    assert document["predictions"] == expected
    table = subprocess.run([*run, str(paths[0])], capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and table.stdout.startswith(str(paths[0]) + "\t")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    for args, code in (
        (["missing.png"], "file_not_found"),
        ([str(tmp_path / "empty")], "no_images"),
        ([str(tmp_path / "broken.png")], "invalid_image"),
    ):
        refused = subprocess.run([*run, *args], capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and f"error [{code}]" in refused.stderr, refused.stderr


def test_an_image_below_the_calibrated_threshold_keeps_its_top_class_and_is_flagged_with_its_score(tmp_path):
    """The answer is always the top class; "unknown" is a flag beside it with the score and the threshold, at the
    threshold's median score: half the images flagged, every label still a class, in the API's JSON and the CLI's line."""
    from clipforge_runtime import top_log_odds

    torch.manual_seed(0)
    student = create_student("tiny_cnn", len(CLASSES), 32, mean=(0.5,) * 3, std=(0.25,) * 3).eval()
    paths = _images(tmp_path / "images", count=6)
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(
        export_onnx(
            student, 32, metadata={"clipforge_model_card": json.dumps({"classes": CLASSES, "input": {"shape": ["batch", 3, 32, 32]}})}
        )
    )
    scores = top_log_odds(Student.load(plain).logits(Student.load(plain).prepare(paths)))
    threshold = float(np.median(scores))
    card = {"classes": CLASSES, "input": {"shape": ["batch", 3, 32, 32]}, "unknown": {"available": True, "threshold": threshold}}
    calibrated = tmp_path / "calibrated.onnx"
    calibrated.write_bytes(export_onnx(student, 32, metadata={"clipforge_model_card": json.dumps(card)}))
    predictions = Student.load(calibrated).predict(paths, top_k=2, unknown=True)
    assert [p.unknown for p in predictions] == [bool(s < threshold) for s in scores] and 0 < sum(p.unknown for p in predictions) < 6
    assert all(p.label == p.top[0][0] in CLASSES and p.unknown_threshold == threshold for p in predictions)
    assert [p.unknown_score for p in predictions] == pytest.approx(scores.tolist(), abs=1e-4)
    assert Student.load(plain).predict(paths, unknown=True)[0].unknown is None  # no calibration: no verdict
    flagged = next(p for p in predictions if p.unknown)
    assert flagged.to_json()["label"] == flagged.top[0][0] and flagged.to_json()["unknown_score"] == flagged.unknown_score
    lines = subprocess.run([sys.executable, "-m", "cli.main", "predict", "--model", str(calibrated), *map(str, paths), "--unknown"],
                           capture_output=True, text=True, check=True).stdout.splitlines()  # fmt: skip
    assert sum("may be none of these" in line for line in lines) == sum(p.unknown for p in predictions)
