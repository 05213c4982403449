"""`make demo`: the service end to end on this machine.

Starts `clipforge serve` (API + one worker, SQLite, server-less broker, local storage) on a free port
with a fresh data dir under runs/, submits the shapes-world job of bench/configs/demo.json (a default
job: no fields but the classes, the teacher and a seed) over HTTP with the client, waits with a
progress bar, downloads the ONNX student, writes 200 held-out test renders per class as PNG folders and
evaluates the student on them through the service (POST /v1/jobs/{id}/evaluations), stops the service,
then scores the same PNG files and 2,000 test renders locally with onnxruntime beside the teacher
(student, teacher, ratio): the service's evaluation and the local one must agree.

The service's first job on a teacher builds its sample bank (core.bank) in storage; the demo then submits a second job
on other classes of the same teacher, which reuses it: both jobs' times are printed, the second one's is what every
later job on the teacher takes.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from client import ClipforgeClient
from client.progress import follow

SHAPE8 = ["circle", "square", "triangle", "star", "hexagon", "cross", "heart", "ring"]
OTHER_CLASSES = ["circle", "star", "heart", "ring"]  # the second job's: another task on the same teacher
CONFIG = Path("bench/configs/demo.json")
READY_TIMEOUT_S = 120
EVAL_PER_CLASS = 200  # test renders per class written as PNG files for the evaluation


def write_test_pngs(folder: Path, per_class: int = EVAL_PER_CLASS) -> dict[str, list[Path]]:
    """Held-out shape8 test renders, ``per_class`` of each class, as PNG files in a folder per class."""
    import numpy as np
    from PIL import Image

    from bench.tasks import get_task

    task = get_task("shape8")
    pixels, labels = task.render("test", per_class * len(SHAPE8) * 2)
    files: dict[str, list[Path]] = {}
    for k, name in enumerate(task.class_texts):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(np.flatnonzero(labels.numpy() == k)[:per_class]):
            path = folder / name / f"{i:04d}.png"
            Image.fromarray((pixels[index].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
            files.setdefault(name, []).append(path)
    return files


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(client: ClipforgeClient, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"clipforge serve exited with status {process.returncode}; see {log}")
        try:
            if client.ready().status == "ready":
                return
        except Exception:  # not listening yet
            pass
        time.sleep(0.3)
    raise SystemExit(f"clipforge serve was not ready within {READY_TIMEOUT_S} s; see {log}")


@contextmanager
def serving(data_dir: Path) -> Iterator[ClipforgeClient]:
    """`clipforge serve` on a free port with its data in ``data_dir`` (its log there too), ready, and a client of it;
    stopped on leaving."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = data_dir / "serve.log"
    print(f"starting clipforge serve on {url} (data in {data_dir}, log in {log})", flush=True)
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--data-dir", str(data_dir)],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        with ClipforgeClient(url) as client:
            wait_ready(client, process, log)
            yield client
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        print("service stopped", flush=True)


def main() -> int:
    Path("runs").mkdir(exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="service-demo-", dir="runs")).resolve()
    with serving(data_dir) as client:
        spec = {**json.loads(CONFIG.read_text()), "classes": SHAPE8}
        began = time.monotonic()
        job = client.submit(spec)
        estimate = "" if job.estimated_seconds is None else f"; estimated {job.estimated_seconds / 60:.0f} min"
        print(f"submitted {job.id} over HTTP: teacher {job.teacher}, seed {job.seed}, {len(SHAPE8)} classes{estimate}", flush=True)
        job = follow(client, job.id)
        if job.status != "succeeded":
            print(f"job {job.id} {job.status}: {job.error}", file=sys.stderr)
            return 1
        seconds = time.monotonic() - began
        onnx = client.download(job.id, "student.onnx", data_dir / "student.onnx")
        metrics = client.get_job(job.id).metrics or {}
        print(f"job {job.id} took {seconds:.0f} s from submission to success ({bank_phrase(metrics)}); downloaded {onnx} "
              "(sha256 verified)", flush=True)  # fmt: skip
        second_seconds = second_job(client, spec)
        print(f"budget {metrics.get('budget')}; the job's own estimate (agreement with the teacher on unseen images): "
              f"{json.dumps(metrics.get('quality'))}", flush=True)  # fmt: skip
        images_dir = data_dir / "evaluation-images"
        files = write_test_pngs(images_dir)
        evaluation = client.evaluate(job.id, images=files)
        evaluation = client.wait_evaluation(job.id, evaluation.id, timeout=600)
        if evaluation.status != "succeeded" or evaluation.result is None:
            print(f"evaluation {evaluation.id} {evaluation.status}: {evaluation.error}", file=sys.stderr)
            return 1
        served = evaluation.result
        print(f"evaluation {evaluation.id} through the service on {served.images} PNG test images: student "
              f"{served.student.accuracy:.4f}, teacher {served.teacher.accuracy:.4f}", flush=True)  # fmt: skip
    bench = [sys.executable, "-m", "cli.main", "bench", "student", "--onnx", str(onnx), "--task", "shape8"]
    local = json.loads(subprocess.run([*bench, "--images-dir", str(images_dir), "--json"], check=True, capture_output=True).stdout)
    same = abs(local["student_onnx_accuracy"] - served.student.accuracy) < 1e-4
    print(f"the same {local['images']} PNG files scored here with onnxruntime: student {local['student_onnx_accuracy']:.4f}, "
          f"teacher {local['teacher_zero_shot_accuracy']:.4f}: {'the same as' if same else 'DIFFERENT FROM'} the service's evaluation",
          flush=True)  # fmt: skip
    print("evaluating the ONNX student with onnxruntime beside the teacher on 2,000 test renders:", flush=True)
    result = subprocess.run([*bench, "--json"], capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return result.returncode
    report = json.loads(result.stdout)
    print(f"  ONNX student {report['student_onnx_accuracy']:.4f}, teacher zero-shot {report['teacher_zero_shot_accuracy']:.4f}, "
          f"ratio {report['ratio']:.3f} on {report['images']} test renders", flush=True)  # fmt: skip
    print(f"summary: the student keeps {report['ratio']:.3f} of the teacher; the first job took {seconds:.0f} s (with the "
          f"bank's build), a job on the built bank {second_seconds:.0f} s", flush=True)  # fmt: skip
    return 0 if same else 1


def bank_phrase(metrics: dict) -> str:
    """How the job obtained its sample bank, from its metrics."""
    bank = metrics.get("bank") or {}
    if not bank.get("used"):
        return f"no sample bank: {bank.get('reason')}"
    return f"sample bank {bank.get('status')} in {float(bank.get('seconds') or 0):.0f} s"


def second_job(client: ClipforgeClient, spec: dict) -> float:
    """A job on other classes of the same teacher: its sample bank is the first job's. Returns its seconds."""
    began = time.monotonic()
    job = client.submit({**spec, "classes": OTHER_CLASSES})
    print(f"submitted {job.id}: {len(OTHER_CLASSES)} other classes ({', '.join(OTHER_CLASSES)}) on the same teacher", flush=True)
    job = follow(client, job.id)
    seconds = time.monotonic() - began
    if job.status != "succeeded":
        raise SystemExit(f"job {job.id} {job.status}: {job.error}")
    metrics = client.get_job(job.id).metrics or {}
    print(f"job {job.id} took {seconds:.0f} s from submission to success ({bank_phrase(metrics)})", flush=True)
    return seconds


if __name__ == "__main__":
    sys.exit(main())
