"""One job over many workers (service.chunks) on a real Redis with two real `clipforge worker` processes: the job's
synthesis is split into chunks that both workers run, and the job gives the surrogate set and the student that one
worker gives when it runs the job whole; a worker SIGKILLed mid-chunk loses that chunk alone, which the reaper queues
again, and the job still succeeds with the same student; a cancelled job ends with no chunk file left.

"The same student" is compared through the ONNX model's weights (a sha256 over its initializers) and ``samples.png``:
the whole ``student.onnx`` differs between any two runs, since its embedded model card records a creation timestamp and
each run's stage times. The surrogate set is compared through its own sha256, which every job's metrics record.

Every worker here has one torch thread, as each would have on a machine of one core per worker (and bit-for-bit results
need the same thread count on both sides).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time

import pytest
from sqlalchemy import select

from service.models import JobChunk
from tests.servers import TINY_SPEC, service_env, start_cli, wait_until
from tests.worker.conftest import open_service

# Four chunks of one batch each (2 classes x 8 images, batch 4), about a second each on an idle core; 8 images per class
# keep the job's held-out quality estimate (8 per class) no dearer than its synthesis.
SPLIT_SPEC = {
    **TINY_SPEC,
    "classes": ["circle", "star"],
    "synthesis": {**TINY_SPEC["synthesis"], "images_per_class": 8, "steps": 40, "batch_size": 4},
    "seed": 13,
}
CHUNKS = 4
THREADS_PER_WORKER = "1"


def start_worker(service) -> object:
    env = {**service_env(service.data_dir, **service.overrides), "OMP_NUM_THREADS": THREADS_PER_WORKER}
    process = start_cli(["worker", "--loglevel", "INFO"], env, service.data_dir / "worker.log")
    service.workers.append(process)
    return process


def onnx_weights_sha256(onnx_bytes: bytes) -> str:
    """A digest of the model's initializers (names, shapes, values): its weights without its metadata."""
    import onnx
    from onnx import numpy_helper

    digest = hashlib.sha256()
    for initializer in sorted(onnx.load_from_string(onnx_bytes).graph.initializer, key=lambda i: i.name):
        array = numpy_helper.to_array(initializer)
        digest.update(f"{initializer.name}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def fingerprint(service, job_id: str) -> dict[str, str]:
    """What must not depend on how many workers ran the job."""
    http = service.http
    metrics = http.get(f"/v1/jobs/{job_id}/artifacts/metrics.json").json()
    return {
        "surrogate": metrics["surrogate_sha256"],
        "samples": hashlib.sha256(http.get(f"/v1/jobs/{job_id}/artifacts/samples.png").content).hexdigest(),
        "student": onnx_weights_sha256(http.get(f"/v1/jobs/{job_id}/artifacts/student.onnx").content),
    }


def chunk_rows(service, job_id: str) -> list[JobChunk]:
    with service.api.app.state.session_factory() as session:
        return list(session.scalars(select(JobChunk).where(JobChunk.job_id == job_id).order_by(JobChunk.chunk_index)))


def chunk_files(service, job_id: str) -> list[str]:
    folder = service.storage / "artifacts" / job_id / "chunks"
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture(scope="module")
def one_worker_result(tmp_path_factory) -> dict[str, str]:
    """The job run whole by one worker (never split), on the embedded transport."""
    with open_service(tmp_path_factory.mktemp("whole"), synthesis_chunk_batches=0) as service:
        start_worker(service)
        job = service.submit(SPLIT_SPEC)
        done = service.wait_finished(job["id"], timeout=180)
        assert done["status"] == "succeeded", done
        assert chunk_rows(service, job["id"]) == []  # run whole: no chunk
        return fingerprint(service, job["id"])


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, redis_url):
    # A Redis database of its own: other tests' services on the session's Redis must not take these messages.
    url = redis_url.rsplit("/", 1)[0] + "/3"
    with open_service(tmp_path_factory.mktemp("split"), broker_url=url, synthesis_chunk_batches=1) as service:
        start_worker(service)
        start_worker(service)
        yield service


def test_a_job_split_over_two_workers_gives_the_one_worker_student(two_workers, one_worker_result):
    job = two_workers.submit(SPLIT_SPEC)
    done = two_workers.wait_finished(job["id"], timeout=180)
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    rows = chunk_rows(two_workers, job["id"])
    assert [(r.first_batch, r.batch_count, r.status, r.attempts) for r in rows] == [(i, 1, "done", 1) for i in range(CHUNKS)]
    workers = {r.lease_owner.rsplit(":", 1)[0] for r in rows}
    assert len(workers) == 2, workers  # both workers synthesized chunks
    metrics = two_workers.http.get(f"/v1/jobs/{job['id']}/artifacts/metrics.json").json()
    assert metrics["synthesis_chunks"] == {"chunks": CHUNKS, "batches": CHUNKS, "workers": 2}
    assert fingerprint(two_workers, job["id"]) == one_worker_result
    # The chunk files are internal: never listed, and gone once the job succeeded.
    names = [a["name"] for a in two_workers.http.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]]
    assert names == ["metrics.json", "model_card.json", "samples.png", "student.onnx", "student.torchscript.pt"]
    assert chunk_files(two_workers, job["id"]) == []
    events = two_workers.events(job["id"])
    assert [e["stage"] for e in events if e["kind"] == "stage"] == ["preparing", "bank", "synthesizing", "distilling", "exporting"]
    assert [e["status"] for e in events if e["kind"] == "status"] == ["queued", "running", "succeeded"]
    progress = [e["progress"] for e in events if e["kind"] in ("progress", "stage")]
    assert progress == sorted(progress) and progress[-1] == 1.0


def _running_chunk(service, job_id: str) -> JobChunk | None:
    running = [r for r in chunk_rows(service, job_id) if r.status == "running" and r.progress < 0.5]
    return running[0] if running else None


def test_a_worker_killed_mid_chunk_loses_that_chunk_alone_and_the_job_still_gives_the_same_student(two_workers, one_worker_result):
    job = two_workers.submit(SPLIT_SPEC)
    chunk = wait_until(lambda: _running_chunk(two_workers, job["id"]), 120, 0.05, "a chunk half-way")
    pid = int(chunk.lease_owner.split(":")[1])
    [victim] = [w for w in two_workers.workers if w.pid == pid]
    os.killpg(victim.pid, signal.SIGKILL)  # the worker and its children, with no chance to clean up
    victim.wait()
    killed_at = time.monotonic()
    done = two_workers.wait_finished(job["id"], timeout=180)
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    retried = next(r for r in chunk_rows(two_workers, job["id"]) if r.chunk_index == chunk.chunk_index)
    assert retried.status == "done" and retried.attempts == 2 and retried.lease_owner.split(":")[1] != str(pid)
    assert all(r.attempts == 1 for r in chunk_rows(two_workers, job["id"]) if r.chunk_index != chunk.chunk_index)
    warnings = [e["message"] for e in two_workers.events(job["id"]) if e["kind"] == "warning"]
    assert any(f"chunk {chunk.chunk_index} lost its lease; chunk requeued" in m for m in warnings), warnings
    assert fingerprint(two_workers, job["id"]) == one_worker_result
    assert chunk_files(two_workers, job["id"]) == []
    print(f"succeeded {time.monotonic() - killed_at:.1f} s after the kill")
    start_worker(two_workers)  # two workers again for what follows


def test_cancelling_mid_synthesis_ends_cancelled_with_no_chunk_file_left(two_workers):
    job = two_workers.submit({**SPLIT_SPEC, "seed": 14})
    wait_until(lambda: _running_chunk(two_workers, job["id"]), 120, 0.05, "a chunk half-way")
    assert two_workers.http.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelling"
    began = time.monotonic()
    done = two_workers.wait_finished(job["id"], timeout=30)
    assert done["status"] == "cancelled" and time.monotonic() - began < 10, done
    assert {r.status for r in chunk_rows(two_workers, job["id"])} <= {"done", "cancelled"}
    assert two_workers.http.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"] == []
    time.sleep(1.0)  # a worker that was still finishing a chunk removes its own file
    assert chunk_files(two_workers, job["id"]) == []
    assert two_workers.http.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert not (two_workers.storage / "artifacts" / job["id"]).exists() and chunk_rows(two_workers, job["id"]) == []
    # The workers are free again: a job submitted now runs.
    probe = two_workers.submit({**TINY_SPEC, "classes": ["heart", "ring"]})
    assert two_workers.wait_finished(probe["id"], timeout=120)["status"] == "succeeded"


def test_a_split_job_on_a_pool_embeds_it_in_its_own_stage_with_progress_and_its_distillation_loads_it(two_workers):
    import io

    from PIL import Image

    from bench.tasks import get_task

    renders, _ = get_task("shape8").render("val", 8)
    files = []
    for index, pixels in enumerate(renders):
        buffer = io.BytesIO()
        Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(buffer, format="PNG")
        files.append(("images", (f"{index}.png", buffer.getvalue(), "image/png")))
    pool = two_workers.http.post("/v1/pools", files=files).json()
    job = two_workers.submit({**SPLIT_SPEC, "synthesis": {**SPLIT_SPEC["synthesis"], "pool": pool["id"]}})
    done = two_workers.wait_finished(job["id"], timeout=180)
    assert done["status"] == "succeeded", done
    assert len(chunk_rows(two_workers, job["id"])) == CHUNKS  # split, as the job without a pool
    # Built once, by the process that prepared the job; the distillation's process loaded it (no second build).
    assert done["metrics"]["pool_embeddings"]["status"] == "reused" and done["metrics"]["pool"]["images"] == 8
    events = two_workers.events(job["id"])
    assert [e["stage"] for e in events if e["kind"] == "stage"][:2] == ["pool", "preparing"]
    assert len([e for e in events if e["kind"] == "progress" and e["stage"] == "pool"]) >= 2
