"""`make demo`: the service end to end on this machine.

Starts `clipforge serve` (API + one worker, SQLite, server-less broker, local storage) on a free port
with a fresh data dir under runs/, submits the shapes-world job of bench/configs/demo.json (a default
job: no fields but the classes, the teacher and a seed) over HTTP with the client, waits with a
progress bar, downloads the ONNX student, evaluates it with onnxruntime on rendered test images beside
the teacher (student, teacher, ratio), and stops the service.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from client import ClipforgeClient
from client.progress import follow

SHAPE8 = ["circle", "square", "triangle", "star", "hexagon", "cross", "heart", "ring"]
CONFIG = Path("bench/configs/demo.json")
READY_TIMEOUT_S = 120


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


def main() -> int:
    Path("runs").mkdir(exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="service-demo-", dir="runs")).resolve()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = data_dir / "serve.log"
    print(f"starting clipforge serve on {url} (data in {data_dir}, log in {log})", flush=True)
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--data-dir", str(data_dir)],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        with ClipforgeClient(url) as client:
            wait_ready(client, process, log)
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
            print(f"job {job.id} took {seconds:.0f} s from submission to success; downloaded {onnx} (sha256 verified)", flush=True)
            metrics = client.get_job(job.id).metrics or {}
            print(f"budget {metrics.get('budget')}; the job's own estimate (agreement with the teacher on unseen images): "
                  f"{json.dumps(metrics.get('quality'))}", flush=True)  # fmt: skip
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        print("service stopped", flush=True)
    print("evaluating the ONNX student with onnxruntime beside the teacher:", flush=True)
    return subprocess.call([sys.executable, "-m", "cli.main", "bench", "student", "--onnx", str(onnx), "--task", "shape8"])


if __name__ == "__main__":
    sys.exit(main())
