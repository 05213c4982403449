"""End to end on object storage: `clipforge serve` (API + worker) with CLIPFORGE_STORAGE_URL=s3://... and the AWS
variables pointing at an S3-compatible server (moto's), presigned downloads on. Uploads, artifacts and evaluations
live in the bucket and nowhere on local disk; downloads redirect to the store and the client checks their sha256;
deleting a job removes its objects."""

from __future__ import annotations

import hashlib
import signal

import httpx
import pytest

from client import ClipforgeClient
from tests.e2e.test_evaluations import write_pngs
from tests.servers import TINY_SPEC, ThrowawayS3, free_port, service_env, start_cli, wait_until

CLASSES = ["circle", "square", "triangle"]
EXAMPLES_PER_CLASS = 2
EVALUATION_IMAGES_PER_CLASS = 3
JOB_TIMEOUT_S = 240
READY_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def served_on_s3(s3_server: ThrowawayS3, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("serve-s3")
    prefix = "e2e"
    port = free_port()
    env = {
        **service_env(data_dir, storage_url=s3_server.storage_url(prefix), storage_presigned_downloads="true"),
        **s3_server.env(),
    }
    process = start_cli(["serve", "--port", str(port)], env, data_dir / "serve.log")
    client = ClipforgeClient(f"http://127.0.0.1:{port}")

    def ready() -> bool:
        try:
            return client.ready().status == "ready"
        except Exception:
            return False

    try:
        wait_until(ready, READY_TIMEOUT_S, 0.2, "clipforge serve on S3 ready")
        yield client, data_dir, prefix
    finally:
        client.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)


def test_a_job_with_example_images_runs_on_the_bucket_and_leaves_nothing_on_disk(served_on_s3, s3_server, tmp_path):
    client, data_dir, prefix = served_on_s3
    examples = write_pngs(tmp_path / "examples", per_class=EXAMPLES_PER_CLASS)
    job = client.submit({**TINY_SPEC, "classes": CLASSES, "seed": 7}, images=examples)
    uploads = s3_server.keys(f"{prefix}/uploads/{job.id}/")
    assert len(uploads) == EXAMPLES_PER_CLASS * len(CLASSES)  # the uploads are in the bucket before the job runs

    done = client.wait(job.id, timeout=JOB_TIMEOUT_S)
    assert done.status == "succeeded", done.error
    # The teacher's sample bank lives in the bucket too, one object under banks/, whole: the job's metrics say how.
    [bank] = s3_server.keys(f"{prefix}/banks/")
    assert bank.endswith(".bank") and (done.metrics or {})["bank"]["status"] == "built"
    artifacts = client.artifacts(job.id).data
    assert {a.name for a in artifacts} >= {"student.onnx", "model_card.json", "metrics.json"}
    assert s3_server.keys(f"{prefix}/artifacts/{job.id}/") == sorted(f"{prefix}/artifacts/{job.id}/{a.name}" for a in artifacts)
    for artifact in artifacts:  # each a redirect to the store, checked by the client against the API's sha256
        path = client.download(job.id, artifact.name, tmp_path / "downloads")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact.sha256 and path.stat().st_size == artifact.size
    onnx = next(a for a in artifacts if a.name == "student.onnx")
    with httpx.Client(base_url=client.url) as http:
        redirect = http.get(f"/v1/jobs/{job.id}/artifacts/student.onnx")
        assert redirect.status_code == 307 and redirect.headers["location"].startswith(s3_server.endpoint_url)
        streamed = http.get(f"/v1/jobs/{job.id}/artifacts/student.onnx", headers={"Range": "bytes=0-"})  # through the API
        assert streamed.status_code == 206 and hashlib.sha256(streamed.content).hexdigest() == onnx.sha256

    # An evaluation: its images and results in the bucket too, its artifacts redirected the same way.
    created = client.evaluate(job.id, images=write_pngs(tmp_path / "eval", per_class=EVALUATION_IMAGES_PER_CLASS))
    evaluation = client.wait_evaluation(job.id, created.id, timeout=JOB_TIMEOUT_S)
    assert evaluation.status == "succeeded", evaluation.error
    for artifact in evaluation.artifacts:
        path = client.download_evaluation_artifact(job.id, evaluation.id, artifact.name, tmp_path / "evaluation")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact.sha256
    assert any(evaluation.id in key for key in s3_server.keys(f"{prefix}/artifacts/{job.id}/"))

    # Nothing on local disk: no storage folder, no upload or artifact anywhere in the data dir.
    assert not (data_dir / "storage").exists()
    names = {p.name for p in data_dir.rglob("*")}
    assert not names & ({a.name for a in artifacts} | {a.name for a in evaluation.artifacts}), names

    client.delete(job.id)
    assert s3_server.keys(f"{prefix}/uploads/{job.id}/") == [] and s3_server.keys(f"{prefix}/artifacts/{job.id}/") == []
    assert s3_server.keys(f"{prefix}/banks/") == [bank]  # shared by the teacher's jobs: it outlives this one

    # A second job on other classes loads the bank from the bucket, checked against its sha256, instead of building it.
    second = client.wait(client.submit({**TINY_SPEC, "classes": ["heart", "ring"], "seed": 8}).id, timeout=JOB_TIMEOUT_S)
    assert second.status == "succeeded" and (second.metrics or {})["bank"]["status"] == "reused", second
