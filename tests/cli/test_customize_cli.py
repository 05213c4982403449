"""`clipforge customize` and `clipforge bench student`, run as the installed console script."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from bench.tasks import get_task
from tests.cli.test_teachers_cli import run
from tests.servers import QUICK_EXPORT, QUICK_PROBES

SMALL = {
    "synthesis": {"images_per_class": 6, "steps": 10, "cutouts": 2, "batch_size": 24, **QUICK_PROBES},
    "distillation": {"epochs": 2, "warmup_epochs": 1, "batch_size": 8},
    "student": {"arch": "tiny_cnn"},
    "export": QUICK_EXPORT,
}


def test_customize_writes_artifacts_and_the_onnx_student_evaluates(tmp_path):
    config = tmp_path / "spec.json"
    config.write_text(json.dumps(SMALL))
    out = tmp_path / "out"
    # Example images for one class, as a user would have them: PNG files in a folder.
    folder = tmp_path / "donuts"
    folder.mkdir()
    for i, image in enumerate(get_task("ambiguous").examples(3)["donut"]):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / f"{i}.png")
    result = run(
        "customize",
        "--teacher",
        "shapes-mini",
        "--classes",
        "circle,square,triangle,star,hexagon,cross,heart,ring",
        "--images",
        f"ring={folder}",
        "--config",
        str(config),
        "--seed",
        "3",
        "--device",
        "cpu",
        "--bank-dir",
        str(tmp_path / "banks"),
        "--bank-images",
        "128",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "metrics.json").read_text())["bank"]["status"] == "built"  # in --bank-dir, at --bank-images
    assert {p.name for p in out.iterdir()} == {"student.onnx", "student.torchscript.pt", "model_card.json", "samples.png", "metrics.json"}
    card = json.loads((out / "model_card.json").read_text())
    assert card["spec"]["seed"] == 3 and card["spec"]["classes"][7] == {"name": "ring", "text": None, "images": [str(folder)]}
    assert "synthesizing" in result.stderr and "%" in result.stderr  # the progress bar
    evaluation = run("bench", "student", "--onnx", str(out / "student.onnx"), "--task", "shape8", "--images", "200", "--json")
    assert evaluation.returncode == 0, evaluation.stderr
    figures = json.loads(evaluation.stdout)
    assert 0.0 <= figures["student_onnx_accuracy"] <= 1.0 and figures["teacher_zero_shot_accuracy"] > 0.8


def test_bad_specs_fail_with_a_code_and_write_nothing(tmp_path):
    out = tmp_path / "out"
    cases = [
        ("--classes", "circle"),  # one class
        ("--classes", "circle,circle"),  # duplicate
        ("--classes", "circle,square", "--device", "tpu"),
        ("--classes", "circle,square", "--images", "nonsense"),
    ]
    for args in cases:
        result = run("customize", *args, "--out", str(out))
        assert result.returncode == 2, (args, result.stderr)
        assert "error [invalid_spec]" in result.stderr and "Traceback" not in result.stderr
    result = run("customize", "--classes", "a,b", "--images", f"a={tmp_path / 'missing'}", "--out", str(out))
    assert result.returncode == 2 and "error [invalid_images]" in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = run("customize", "--config", str(bad), "--out", str(out))
    assert result.returncode == 2 and "error [invalid_spec]" in result.stderr
    assert not out.exists()


def test_an_open_clip_teacher_without_a_decoder_is_refused_at_once_with_the_fix(tmp_path):
    """Before any weight is read: the check needs only the teacher's name (an open_clip model has no paired decoder),
    so the checkpoint's content never matters and the refusal takes the command's start-up time."""
    checkpoint = tmp_path / "rn50.pt"
    checkpoint.write_bytes(b"not read")
    result = run("customize", "--teacher", f"RN50@{checkpoint}", "--classes", "cat,dog", "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert "error [no_image_prior]" in result.stderr and "clipforge decoders pull" in result.stderr
    assert not (tmp_path / "out").exists()


def _save_renders(folder, count: int) -> None:
    folder.mkdir(parents=True)
    images, _ = get_task("shape8").render("val", count)
    for i, image in enumerate(images[:count]):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")


def test_a_folder_of_unlabelled_images_is_the_jobs_pool(tmp_path):
    pool = tmp_path / "photos"
    _save_renders(pool / "nested", 20)  # searched recursively, as `clipforge pools create` reads a folder
    config = tmp_path / "spec.json"
    config.write_text(json.dumps({**SMALL, "export": {**QUICK_EXPORT, "formats": ["onnx"]}}))
    out = tmp_path / "out"
    common = ("--teacher", "shapes-mini", "--classes", "circle,square", "--config", str(config), "--seed", "1", "--quiet")
    # Embedded ahead (`clipforge pools embed`), where the job looks for them: the job then loads them.
    banks = ("--bank-dir", str(tmp_path / "banks"))
    embedded = run("pools", "embed", str(pool), "--teacher", "shapes-mini", *banks, "--quiet")
    assert embedded.returncode == 0, embedded.stderr
    assert json.loads(embedded.stdout)["status"] == "built" and json.loads(embedded.stdout)["images"] == 20
    assert json.loads(run("pools", "embed", str(pool), "--teacher", "shapes-mini", *banks, "--quiet").stdout)["status"] == "reused"
    result = run("customize", *common, "--pool", str(pool), *banks, "--out", str(out))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pool_embeddings"]["status"] == "reused" and metrics["pool_embeddings"]["key"] == json.loads(embedded.stdout)["key"]
    assert (metrics["pool"]["images"], metrics["pool"]["held_out_images"], metrics["pool"]["share"]) == (20, 2, 0.75)
    card = json.loads((out / "model_card.json").read_text())
    assert card["spec"]["synthesis"]["pool"].startswith("pool_") and card["spec"]["distillation"]["pool_share"] == 0.75
    # Refused with a code and nothing written: a folder with no image, and a service's pool id without its images.
    (tmp_path / "empty").mkdir()
    refused = tmp_path / "refused"
    result = run("customize", *common, "--pool", str(tmp_path / "empty"), "--out", str(refused))
    assert result.returncode == 2 and "error [no_images]" in result.stderr
    config.write_text(json.dumps({**SMALL, "synthesis": {**SMALL["synthesis"], "pool": "pool_" + "a" * 26}}))
    result = run("customize", *common, "--out", str(refused))
    assert result.returncode == 2 and "error [invalid_spec]" in result.stderr and "--pool DIR" in result.stderr
    assert not refused.exists()
