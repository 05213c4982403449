"""End to end: a succeeded job's student evaluated on labelled PNG images over HTTP, checked against onnxruntime run
here on the same files; the zip form, the CLI table, the artifacts, deletion, and the refusals that leave nothing."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client import ApiError
from tests.servers import TINY_SPEC

CLASSES = ["circle", "square", "triangle"]
PER_CLASS = 6


def write_pngs(folder: Path, per_class: int = PER_CLASS) -> dict[str, list[Path]]:
    """Shape8 test renders of CLASSES as PNG files, a folder per class."""
    from bench.tasks import get_task

    task = get_task("shape8")
    pixels, labels = task.render("test", 200)
    files: dict[str, list[Path]] = {}
    for name in CLASSES:
        k = list(task.class_texts).index(name)
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(np.flatnonzero(labels.numpy() == k)[:per_class]):
            array = (pixels[index].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            path = folder / name / f"{i:03d}.png"
            Image.fromarray(array).save(path)
            files.setdefault(name, []).append(path)
    return files


def local_accuracy(onnx_bytes: bytes, files: dict[str, list[Path]]) -> float:
    """The student's accuracy on the PNG files, decoded as the worker decodes them, run here by onnxruntime."""
    from core.export import run_onnx
    from core.images import to_pixels
    from core.scoring import onnx_input_size

    size = onnx_input_size(onnx_bytes)
    pixels, labels = [], []
    for k, name in enumerate(CLASSES):
        for path in files[name]:
            with Image.open(path) as image:
                pixels.append(to_pixels(image, size).numpy())
            labels.append(k)
    predictions = run_onnx(onnx_bytes, np.stack(pixels)).argmax(1)
    return float((predictions == np.array(labels)).mean())


@pytest.fixture(scope="module")
def finished_job(served, tmp_path_factory):
    client = served[0]
    job = client.wait(client.submit({**TINY_SPEC, "classes": CLASSES, "seed": 5}).id, timeout=240)
    onnx_path = client.download(job.id, "student.onnx", tmp_path_factory.mktemp("student") / "student.onnx")
    return job, onnx_path.read_bytes()


def test_an_evaluation_matches_onnxruntime_on_the_same_files(served, finished_job, tmp_path):
    client, data_dir, _ = served
    job, onnx_bytes = finished_job
    files = write_pngs(tmp_path / "eval")
    created = client.evaluate(job.id, images=files)
    assert created.status == "queued" and created.counts == {name: PER_CLASS for name in CLASSES} and created.result is None
    done = client.wait_evaluation(job.id, created.id, timeout=120)
    assert done.status == "succeeded", done.error
    result = done.result
    assert result.images == 3 * PER_CLASS and result.classes == CLASSES
    assert result.student.accuracy == pytest.approx(local_accuracy(onnx_bytes, files), abs=1e-4)
    assert np.array(result.student.confusion).sum() == 3 * PER_CLASS and len(result.teacher.confusion) == 3
    # The bundled teacher knows these shapes: its zero-shot head is far above chance on them.
    assert result.teacher.accuracy > 0.8
    mistakes = round((1 - result.student.accuracy) * result.images)
    assert result.student_mistakes == mistakes
    names = {a.name for a in done.artifacts}
    assert names == {"confusion.png", "mistakes.png", "evaluation.json"}
    saved = client.download_evaluation_artifact(job.id, done.id, "evaluation.json", tmp_path / "evaluation.json")
    detail = json.loads(saved.read_text())
    assert len(detail["per_image"]) == 3 * PER_CLASS and detail["student"]["accuracy"] == result.student.accuracy
    # `clipforge predict` (the torch-free runtime) on the same files: the evaluation's top-1 for every one of them, and
    # onnxruntime's run here on the same decoded pixels.
    onnx_path = tmp_path / "student.onnx"
    onnx_path.write_bytes(onnx_bytes)
    predicted = subprocess.run([sys.executable, "-m", "cli.main", "predict", "--model", str(onnx_path), str(tmp_path / "eval"),
                                "--top-k", "2", "--json"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr
    by_file = {Path(p["source"]).parent.name + "/" + Path(p["source"]).name: p["top"] for p in json.loads(predicted.stdout)["predictions"]}
    assert len(by_file) == 3 * PER_CLASS
    assert all(len(top) == 2 and top[0]["probability"] >= top[1]["probability"] for top in by_file.values())
    evaluated = {f"{row['class']}/{row['filename']}": row["student"] for row in detail["per_image"]}
    assert {key: top[0]["class"] for key, top in by_file.items()} == evaluated
    right = [top[0]["class"] == key.split("/")[0] for key, top in by_file.items()]
    assert local_accuracy(onnx_bytes, files) == pytest.approx(np.mean(right))
    png = client.download_evaluation_artifact(job.id, done.id, "confusion.png", tmp_path / "confusion.png")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 400
    listed = client.evaluations(job.id).data
    assert done.id in [e.id for e in listed]
    # Its files live under the job's folders, and go with it.
    client.delete_evaluation(job.id, done.id)
    with pytest.raises(ApiError) as missing:
        client.get_evaluation(job.id, done.id)
    assert missing.value.code == "evaluation_not_found"
    assert not list((data_dir / "storage").rglob(f"*{done.id}*"))


def test_a_zip_with_a_folder_per_class_and_the_cli_table(served, finished_job, tmp_path):
    client, _, _ = served
    job, onnx_bytes = finished_job
    files = write_pngs(tmp_path / "eval", per_class=4)
    archive = tmp_path / "eval.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, paths in files.items():
            for path in paths:
                zf.write(path, f"my-images/{name}/{path.name}")  # a zipped folder of class folders
    command = ["jobs", "evaluate", job.id, "--archive", str(archive), "--url", client.url, "--out", str(tmp_path / "report")]
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", *command],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["class", "images", "student", "teacher"]
    assert [line.split()[0] for line in lines[1:4]] == CLASSES and lines[4].split()[:2] == ["all", "12"]
    assert float(lines[4].split()[2]) == pytest.approx(local_accuracy(onnx_bytes, files), abs=1e-3)
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"confusion.png", "mistakes.png", "evaluation.json"}


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("kind", "code", "status"),
    [
        ("unknown_class", "unknown_class", 422),
        ("not_an_image", "invalid_image", 422),
        ("traversal", "unsafe_archive_path", 422),
        ("absolute", "unsafe_archive_path", 422),
        ("bomb", "archive_too_large", 413),
        ("empty_class", "empty_class", 422),
        ("not_a_zip", "invalid_archive", 400),
        ("loose_file", "invalid_archive_layout", 422),
        ("nothing", "no_images", 422),
        ("huge_class_count", "too_many_classes", 422),
    ],
)
def test_refusals_have_their_own_code_and_leave_nothing(served, finished_job, kind, code, status):
    client, data_dir, _ = served
    job, _ = finished_job
    before = client.evaluations(job.id).data
    png = _png()
    parts: dict[str, object] = {
        "unknown_class": {"images": {"dolphin": [png]}},
        "not_an_image": {"images": {"circle": [b"%PDF-1.4 not an image"]}},
        "traversal": {"archive": _zip({"circle/../../escape.png": png})},
        "absolute": {"archive": _zip({"/etc/circle/a.png": png})},
        "bomb": {"archive": _zip({"circle/a.png": b"\0" * 20_000_000})},
        "empty_class": {"archive": _zip({"circle/a.png": png, "square/": b""})},
        "not_a_zip": {"archive": b"PK\x03\x04 this is not really a zip"},
        "loose_file": {"archive": _zip({"a.png": png})},
        "nothing": {"archive": _zip({"__MACOSX/circle/._a.png": png, "circle/.DS_Store": b"x"})},
        "huge_class_count": {"images": {f"class {i}": [png] for i in range(500)}},
    }[kind]
    with pytest.raises(ApiError) as refused:
        client.evaluate(job.id, **parts)  # type: ignore[arg-type]
    assert (refused.value.code, refused.value.status) == (code, status), refused.value
    assert client.evaluations(job.id).data == before
    stored = {p.name for p in (data_dir / "storage").rglob("eval_*")}
    assert stored <= {e.id for e in before}


def test_an_unknown_job_is_not_found(served):
    client, _, _ = served
    with pytest.raises(ApiError) as refused:
        client.evaluate("job_00000000000000000000000000", images={"circle": [_png()]})
    assert (refused.value.code, refused.value.status) == ("job_not_found", 404)


def test_only_a_succeeded_job_can_be_evaluated(served):
    client, _, _ = served
    job = client.submit({**TINY_SPEC, "classes": CLASSES, "seed": 6})
    client.cancel(job.id)
    with pytest.raises(ApiError) as refused:
        client.evaluate(job.id, images={"circle": [_png()]})
    assert (refused.value.code, refused.value.status) == ("job_not_succeeded", 409)
