"""End to end: `clipforge serve` (API + worker, no external servers) driven over HTTP by the client, as a user would."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np

from tests.servers import TINY_SPEC, wait_until


def test_submit_wait_download_and_run_the_onnx_student(served, tmp_path):
    from bench.tasks import get_task
    from core.export import onnx_metadata, run_onnx

    client, _, _ = served
    spec = {**TINY_SPEC, "classes": ["circle", "square", "triangle"], "seed": 21}
    updates: list[str] = []
    first = client.submit(spec)
    done = client.wait(first.id, timeout=180, on_update=lambda job: updates.append(job.status))
    assert done.status == "succeeded" and done.seed == 21 and {"queued", "succeeded"} <= set(updates)
    onnx_path = client.download(first.id, "student.onnx", tmp_path / "first.onnx")
    card = json.loads(onnx_metadata(onnx_path.read_bytes())["clipforge_model_card"])
    assert card["classes"] == ["circle", "square", "triangle"] and card["spec"]["seed"] == 21
    images, _ = get_task("shape8").render("test", 16)
    logits = run_onnx(onnx_path.read_bytes(), images.numpy())
    assert logits.shape == (16, 3) and np.isfinite(logits).all()
    # Determinism: the same spec and seed give the same student.
    second = client.wait(client.submit(spec).id, timeout=180)
    again = run_onnx(client.download(second.id, "student.onnx", tmp_path / "second.onnx").read_bytes(), images.numpy())
    np.testing.assert_array_equal(logits, again)


def test_a_job_split_into_chunks_runs_on_the_one_embedded_worker(served):
    # The default settings split a job of several synthesis batches into chunks (one batch each); `serve` has one
    # worker, which runs them one after the other, then the distillation. A class given by example images: each chunk
    # and the distillation read the uploads.
    import io

    from PIL import Image

    from bench.tasks import get_task

    client, data_dir, _ = served
    donuts = []
    for pixels in get_task("ambiguous").examples(2)["donut"]:
        buffer = io.BytesIO()
        Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(buffer, format="PNG")
        donuts.append(buffer.getvalue())
    classes = ["circle", "square", "donut"]
    spec = {**TINY_SPEC, "classes": classes, "synthesis": {**TINY_SPEC["synthesis"], "batch_size": 4}}
    done = client.wait(client.submit(spec, images={"donut": donuts}).id, timeout=240)
    assert done.status == "succeeded" and done.attempts == 1, done.error
    metrics = json.loads(client.download(done.id, "metrics.json", data_dir / "split-metrics.json").read_text())
    assert metrics["synthesis_chunks"] == {"chunks": 3, "batches": 3, "workers": 1}
    assert not (data_dir / "storage" / "artifacts" / done.id / "chunks").exists()  # internal files, gone once it succeeded


def test_delete_removes_the_job_and_its_files(served):
    client, data_dir, _ = served
    job = client.wait(client.submit({**TINY_SPEC, "classes": ["star", "ring"]}).id, timeout=180)
    folder = data_dir / "storage" / "artifacts" / job.id
    assert folder.is_dir()
    client.delete(job.id)
    assert not folder.exists() and job.id not in [j.id for j in client.iter_jobs()]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_stops_the_api_and_its_worker(served):
    _, _, process = served
    workers = [pid for pid in _children(process.pid) if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert workers
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    assert time.monotonic() - began < 45
    wait_until(lambda: not any(_alive(pid) for pid in workers), 10, what="worker stopped")
