"""The storage folder on a real, tiny filesystem (a 64 KiB tmpfs): full, then read-only. The job fails with a clear
code, and no partial artifact is visible: no artifact rows, no files (temporary or whole) left in storage.

Mounting needs root (CI runs as root); there is no in-process stand-in for a full disk, so these tests fail loudly without it.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.faults.conftest import mount_tmpfs, remount, unmount
from tests.servers import TINY_SPEC
from tests.worker.conftest import open_service

# The five artifacts of a TINY_SPEC job take a few hundred KiB; the first small ones fit, the student does not.
TMPFS_SIZE = "size=64k"


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
