"""`clipforge bench speed` end to end on a tiny exported student: every figure present, INT8 scored, files written."""

from __future__ import annotations

import json
import subprocess
import sys

from core.spec import CustomizeSpec
from tests.servers import REPO


def test_bench_speed_measures_the_student_the_teacher_int8_and_synthesis(shapes_teacher, tmp_path):
    from core.pipeline import customize

    spec = CustomizeSpec(
        teacher="shapes-mini",
        classes=["circle", "square", "star"],
        synthesis={"images_per_class": 8, "steps": 0, "batch_size": 24, "init_candidates": 1},
        distillation={"method": "kd", "steps": 20, "fresh_share": 0.0},
        student={"arch": "tiny_cnn"},
        export={"formats": ["onnx", "onnx_int8"]},
        budget="cpu",
    )
    result = customize(spec, shapes_teacher)
    assert {"student.onnx", "student.int8.onnx"} <= set(result.artifacts)
    onnx_path = tmp_path / "student.onnx"
    onnx_path.write_bytes(result.artifacts["student.onnx"])
    command = [sys.executable, "-m", "cli.main", "bench", "speed", "--onnx", str(onnx_path), "--int8", "--repeats", "5",
               "--images", "60", "--task", "shapes:circle,square,star", "--out", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "speed.json").read_text())
    models = {(t["model"], t["batch"]) for t in report["timings"]}
    assert {("student (ONNX, fp32)", 1), ("student (ONNX, fp32)", 32), ("teacher (torch)", 32), ("student (ONNX, INT8)", 1)} <= models
    assert all(t["median_ms"] > 0 for t in report["timings"]) and report["student_speedup"]["batch_1"] > 0
    assert 0 <= report["accuracy"]["int8"] <= 1 and report["size_bytes"]["int8"] < report["size_bytes"]["fp32"]
    assert report["synthesis_images_x_steps_per_second"]["batch_64"] > 0
    assert "faster than the torch teacher" in (tmp_path / "out" / "speed.md").read_text()
