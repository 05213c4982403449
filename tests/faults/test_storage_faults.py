"""The storage folder on a real, tiny filesystem (a 64 KiB tmpfs): full, then read-only. The job fails with a clear
code, and no partial artifact is visible: no artifact rows, no files (temporary or whole) left in storage.
Object storage (an S3-compatible server, moto's) stopped under a running API: submissions answer 503 at once and leave
nothing, readiness names the store, and the same API recovers when the store is back.

Mounting needs root (CI runs as root); there is no in-process stand-in for a full disk, so these tests fail loudly without it.
"""

from __future__ import annotations

import io
import time

import httpx
import pytest
from PIL import Image

from tests.faults.conftest import ApiProcess, elapsed, mount_tmpfs, remount, unmount
from tests.servers import TINY_SPEC, ThrowawayS3, settings_for, start_s3_server
from tests.worker.conftest import open_service

# The five artifacts of a TINY_SPEC job take a few hundred KiB; the first small ones fit, the student does not.
TMPFS_SIZE = "size=64k"
# Connection refused and one retry (service.object_storage): a submission to a stopped store is refused in seconds.
STORE_DOWN_ANSWER_S = 10


def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def tiny_storage(tmp_path):
    storage = tmp_path / "storage"
    mount_tmpfs(storage, TMPFS_SIZE)
    try:
        yield tmp_path, storage
    finally:
        unmount(storage)


def test_disk_full_then_read_only_storage_fail_jobs_with_a_code_and_leave_nothing(tiny_storage):
    data_dir, storage = tiny_storage
    with open_service(data_dir) as service:
        service.start_worker()
        # Disk full: the worker's artifact writes hit ENOSPC part-way through the five files.
        full = service.submit({**TINY_SPEC, "classes": ["circle", "square"], "seed": 3})
        done = service.wait_finished(full["id"], timeout=180)
        assert done["status"] == "failed" and done["error"]["code"] == "storage_full", done
        assert "No space left on device" in done["error"]["message"]
        assert service.http.get(f"/v1/jobs/{full['id']}/artifacts").json()["data"] == []
        assert _files(storage) == []  # the artifacts written before the disk filled, and the temp file, are gone
        assert [e["data"] for e in service.events(full["id"]) if e["kind"] == "error"] == [{"code": "storage_full"}]

        # Read-only (a remount, as after an I/O error): an upload is refused at once, a job fails when it stores its artifacts.
        remount(storage, "ro")
        before = service.http.get("/v1/jobs").json()["data"]
        parts = [("spec", (None, '{"classes": ["dot", "square"]}')), ("images[dot]", ("dot.png", _png(), "image/png"))]
        refused = service.http.post("/v1/jobs", files=parts)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "storage_unavailable", refused.text
        assert service.http.get("/v1/jobs").json()["data"] == before  # no job row for the refused submission
        readonly = service.submit({**TINY_SPEC, "classes": ["star", "ring"], "seed": 4})
        done = service.wait_finished(readonly["id"], timeout=180)
        assert done["status"] == "failed" and done["error"]["code"] == "storage_unavailable", done
        assert "Read-only file system" in done["error"]["message"]
        assert service.http.get(f"/v1/jobs/{readonly['id']}/artifacts").json()["data"] == []
        assert _files(storage) == []

        # Writable and with room again: the same service recovers without a restart.
        remount(storage, "rw,size=16m")
        recovered = service.wait_finished(service.submit({**TINY_SPEC, "classes": ["star", "ring"], "seed": 4})["id"], timeout=180)
        assert recovered["status"] == "succeeded", recovered
        assert len(service.http.get(f"/v1/jobs/{recovered['id']}/artifacts").json()["data"]) == 5


def _submission(http: httpx.Client) -> httpx.Response:
    parts = [("spec", (None, '{"classes": ["dot", "square"]}')), ("images[dot]", ("dot.png", _png(), "image/png"))]
    return http.post("/v1/jobs", files=parts)


def _finish_with_an_artifact(api: ApiProcess, store: ThrowawayS3, prefix: str, job_id: str) -> None:
    """The job run to success by a stand-in worker (no torch here): a metrics.json in the bucket and its row."""
    from service import jobs as repo
    from service.db import make_engine, make_session_factory, session_scope
    from service.object_storage import S3Storage
    from service.storage import artifact_key

    stored = S3Storage(store.bucket, prefix, client=store.client()).put(artifact_key(job_id, "metrics.json"), b"{}")
    engine = make_engine(settings_for(api.data_dir).database_url)
    try:
        factory = make_session_factory(engine)
        with session_scope(factory) as session:
            assert repo.claim(session, job_id, "test-worker", lease_seconds=60, max_attempts=1) is not None
        with session_scope(factory) as session:
            assert repo.finish(session, job_id, "test-worker", repo.SUCCEEDED, artifacts=[("metrics.json", "application/json", stored)])
    finally:
        engine.dispose()


def test_a_stopped_object_store_is_answered_with_503_and_leaves_nothing(tmp_path):
    prefix = "faults"
    with start_s3_server() as store:
        api = ApiProcess(tmp_path, storage_url=store.storage_url(prefix))
        api.env.update(store.env())
        api.start()
        try:
            with httpx.Client(base_url=api.url, timeout=30) as http:
                accepted = _submission(http)
                assert accepted.status_code == 201, accepted.text
                assert len(store.keys(f"{prefix}/uploads/{accepted.json()['id']}/")) == 1
                _finish_with_an_artifact(api, store, prefix, accepted.json()["id"])
                before = http.get("/v1/jobs").json()["data"]
                stored = store.keys(f"{prefix}/")

                store.stop()
                began = time.monotonic()
                refused = _submission(http)
                assert refused.status_code == 503 and refused.json()["error"]["code"] == "storage_unavailable", refused.text
                assert elapsed(began) < STORE_DOWN_ANSWER_S
                assert http.get("/v1/jobs").json()["data"] == before  # no job row for the refused submission
                ready = http.get("/readyz")
                assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
                checks = ready.json()["error"]["details"]
                assert checks["database"] == checks["broker"] == "ok" and checks["storage"].startswith("error"), checks
                # A download needs the store too: 503 with the code, not a 500 or a broken stream.
                job_id = accepted.json()["id"]
                assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"  # reads from the database answer
                download = http.get(f"/v1/jobs/{job_id}/artifacts/metrics.json")
                assert download.status_code == 503 and download.json()["error"]["code"] == "storage_unavailable", download.text

                store.start()  # the same port and objects: the API's endpoint is valid again
                assert store.keys(f"{prefix}/") == stored  # the refused submission left no object
                assert http.get("/readyz").status_code == 200
                again = _submission(http)
                assert again.status_code == 201, again.text
                assert len(store.keys(f"{prefix}/uploads/{again.json()['id']}/")) == 1
        finally:
            api.stop()
