"""A real worker process on the embedded transport (kombu's SQLAlchemy transport on SQLite): lifecycle, cancellation, failure, images."""

from __future__ import annotations

import hashlib
import io
import itertools
import re

import pytest
from PIL import Image

from tests.servers import SLOW_SPEC, TINY_SPEC
from tests.worker.conftest import open_service, started

ARTIFACTS = ["metrics.json", "model_card.json", "samples.png", "student.onnx", "student.torchscript.pt"]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    # "ghost" is a teacher the API accepts (the operator configured it) but no worker can load.
    with open_service(tmp_path_factory.mktemp("embedded"), extra_teachers=["ghost"]) as service:
        service.start_worker()
        yield service


def test_lifecycle_to_succeeded_with_checksummed_artifacts(embedded):
    job = embedded.submit({**TINY_SPEC, "classes": ["circle", "square", "star"], "seed": 5})
    done = embedded.wait_finished(job["id"], timeout=180)
    assert done["status"] == "succeeded", done
    assert done["progress"] == 1.0 and done["attempts"] == 1 and done["error"] is None
    assert done["stage"] is None  # no stage is under way once it succeeded
    assert done["heartbeat_at"] is not None and done["estimated_seconds"] > 0  # a CPU service estimates at submission
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    events = embedded.events(job["id"])
    assert [e["status"] for e in events if e["kind"] == "status"] == ["queued", "running", "succeeded"]
    assert [e["stage"] for e in events if e["kind"] == "stage"] == ["preparing", "bank", "synthesizing", "distilling", "exporting"]
    progress = [e["progress"] for e in events if e["kind"] == "progress"]
    assert all(b >= a for a, b in itertools.pairwise(progress)) and progress[-1] == 1.0
    assert any(e["kind"] == "metrics" and "loss" in e["data"] for e in events)
    listing = embedded.http.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]
    assert [a["name"] for a in listing] == ARTIFACTS
    for artifact in listing:
        response = embedded.http.get(artifact["url"])
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == artifact["sha256"] == response.headers["x-checksum-sha256"]
        assert len(response.content) == artifact["size"] == int(response.headers["content-length"])
        assert response.headers["etag"] == f'"{artifact["sha256"]}"'
        assert embedded.http.get(artifact["url"], headers={"If-None-Match": response.headers["etag"]}).status_code == 304
    # Exactly the artifacts on disk: no temporary or partial files.
    assert sorted(p.name for p in (embedded.storage / "artifacts" / job["id"]).iterdir()) == ARTIFACTS


def _bank_events(service, job_id: str) -> list[dict]:
    return [e for e in service.events(job_id) if e["kind"] == "metrics" and "bank/reused" in (e["data"] or {})]


def test_a_second_job_on_the_teacher_reuses_the_sample_bank_the_first_built(embedded):
    first = embedded.submit({**TINY_SPEC, "classes": ["circle", "square"], "seed": 1})
    assert embedded.wait_finished(first["id"], timeout=180)["status"] == "succeeded"
    second = embedded.submit({**TINY_SPEC, "classes": ["heart", "ring", "cross"], "seed": 2})
    assert embedded.wait_finished(second["id"], timeout=180)["status"] == "succeeded"
    [built] = _bank_events(embedded, first["id"])  # built by this job, or by an earlier one of the module: either way one bank
    [reused] = _bank_events(embedded, second["id"])
    assert reused["data"]["bank/reused"] == 1.0 and reused["message"].startswith("bank: reused sample bank"), reused
    assert reused["data"]["bank/images"] == 128 and reused["stage"] == "bank"
    key = re.compile(r"sample bank (\w+) ")
    assert key.search(built["message"]).group(1) == key.search(reused["message"]).group(1)  # the one bank
    assert len(list((embedded.storage / "banks").iterdir())) == 1
    metrics = embedded.http.get(f"/v1/jobs/{second['id']}/artifacts/metrics.json").json()
    assert metrics["bank"]["status"] == "reused" and metrics["bank"]["images"] == 128


def test_cancel_while_queued_and_while_running(embedded):
    slow = embedded.submit({**SLOW_SPEC, "classes": ["circle", "square", "star"]})
    behind = embedded.submit({**TINY_SPEC, "classes": ["heart", "ring"]})
    running = embedded.wait_for(slow["id"], started, timeout=120, what="slow job running")
    assert running["spec"].get("budget") in (None, "auto") and running["metrics"]["budget"] == "cpu"  # what "auto" got, while it runs
    queued = embedded.http.post(f"/v1/jobs/{behind['id']}/cancel").json()
    assert queued["status"] == "cancelled"  # at once: no worker involved
    cancelling = embedded.http.post(f"/v1/jobs/{slow['id']}/cancel").json()
    assert cancelling["status"] == "cancelling"
    assert embedded.http.post(f"/v1/jobs/{slow['id']}/cancel").json()["status"] in ("cancelling", "cancelled")  # idempotent
    import time

    began = time.monotonic()
    done = embedded.wait_finished(slow["id"], timeout=30)
    assert done["status"] == "cancelled" and time.monotonic() - began < 10, done
    assert done["progress"] < 1.0
    assert embedded.http.get(f"/v1/jobs/{slow['id']}/artifacts").json()["data"] == []
    assert not (embedded.storage / "artifacts" / slow["id"]).exists()  # no partial artifacts
    # The worker then receives the cancelled job's message and skips it; the job never ran.
    probe = embedded.submit({**TINY_SPEC, "classes": ["cross", "hexagon"]})
    assert embedded.wait_finished(probe["id"], timeout=120)["status"] == "succeeded"
    behind_now = embedded.job(behind["id"])
    assert behind_now["status"] == "cancelled" and behind_now["attempts"] == 0 and behind_now["started_at"] is None
    # A finished job cannot be cancelled, and the answer says so.
    conflict = embedded.http.post(f"/v1/jobs/{probe['id']}/cancel")
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "job_finished"


def test_worker_errors_fail_the_job_with_a_code(embedded):
    # It names a decoder: "auto" for a teacher with no paired one is refused at submission (tests/api/test_image_prior.py).
    synthesis = {**TINY_SPEC["synthesis"], "decoder": "shapes-vae"}
    job = embedded.submit({**TINY_SPEC, "synthesis": synthesis, "classes": ["circle", "square"], "teacher": "ghost"})
    done = embedded.wait_finished(job["id"], timeout=60)
    assert done["status"] == "failed" and done["error"]["code"] == "unknown_teacher" and "ghost" in done["error"]["message"]
    errors = [e for e in embedded.events(job["id"]) if e["kind"] == "error"]
    assert errors and errors[-1]["data"] == {"code": "unknown_teacher"}
    assert not (embedded.storage / "artifacts" / job["id"]).exists()


def test_image_prompts_travel_as_uploads(embedded):
    from bench.tasks import get_task

    examples = get_task("ambiguous").examples(2)
    parts = [("spec", (None, '{"classes": ["donut", {"name": "square", "text": "square"}], "student": {"arch": "tiny_cnn"}, '
                              '"synthesis": {"images_per_class": 4, "steps": 6, "cutouts": 1, "batch_size": 8, "coverage_samples": 256}, '
                              '"distillation": {"epochs": 2, "warmup_epochs": 1, "batch_size": 8}, "seed": 1}'))]  # fmt: skip
    for index, pixels in enumerate(examples["donut"]):
        buffer = io.BytesIO()
        Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(buffer, format="PNG")
        parts.append(("images[donut]", (f"donut{index}.png", buffer.getvalue(), "image/png")))
    response = embedded.http.post("/v1/jobs", files=parts)
    assert response.status_code == 201, response.text
    done = embedded.wait_finished(response.json()["id"], timeout=120)
    assert done["status"] == "succeeded", done
    card = embedded.http.get(f"/v1/jobs/{done['id']}/artifacts/model_card.json").json()
    assert card["classes"] == ["donut", "square"] and len(card["spec"]["classes"][0]["images"]) == 2


def test_a_duplicate_message_runs_the_job_once(embedded):
    # The outbox may publish a job twice (the API's publish, then the reaper's when the API's confirmation was lost):
    # the worker runs the first message and drops the second at its claim.
    from service.queue import enqueue_job

    job = embedded.submit({**TINY_SPEC, "classes": ["circle", "square"], "seed": 9})
    enqueue_job(embedded.api.app.state.celery, embedded.api.app.state.settings, job["id"])
    done = embedded.wait_finished(job["id"], timeout=180)
    # One worker, one job at a time: the duplicate is consumed before this probe runs.
    probe = embedded.submit({**TINY_SPEC, "classes": ["heart", "ring"]})
    assert embedded.wait_finished(probe["id"], timeout=120)["status"] == "succeeded"
    after = embedded.job(job["id"])
    assert done["status"] == after["status"] == "succeeded" and after["attempts"] == 1 and after["finished_at"] == done["finished_at"]
    assert [e["status"] for e in embedded.events(job["id"]) if e["kind"] == "status"] == ["queued", "running", "succeeded"]


def test_a_job_distils_on_the_tenants_image_pool(embedded):
    import io

    from PIL import Image

    from bench.tasks import get_task

    renders, _ = get_task("shape8").render("val", 8)  # unlabelled images of the domain, as a user's photos
    files = []
    for index, pixels in enumerate(renders):
        buffer = io.BytesIO()
        Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(buffer, format="PNG")
        files.append(("images", (f"{index}.png", buffer.getvalue(), "image/png")))
    pool = embedded.http.post("/v1/pools", files=files).json()
    synthesis = {**TINY_SPEC["synthesis"], "pool": pool["id"]}
    job = embedded.submit({**TINY_SPEC, "synthesis": synthesis, "classes": ["circle", "square"], "seed": 2})
    done = embedded.wait_finished(job["id"], timeout=180)
    assert done["status"] == "succeeded", done
    report = done["metrics"]["pool"]
    assert (report["images"], report["held_out_images"], report["share"]) == (8, 1, 0.75) and 0 <= report["agreement"] <= 1
    assert done["metrics"]["pool_embeddings"]["status"] == "built"  # the teacher's passes on the pool, kept in storage
    assert "pool" in {e.get("stage") for e in embedded.events(job["id"])}
    # A second job on the pool, other classes: it loads the pool's embeddings instead of running the teacher on it.
    other = embedded.submit({**TINY_SPEC, "synthesis": synthesis, "classes": ["star", "heart", "ring"], "seed": 3})
    again = embedded.wait_finished(other["id"], timeout=180)
    assert again["status"] == "succeeded", again
    assert again["metrics"]["pool_embeddings"]["status"] == "reused"
    assert again["metrics"]["pool_embeddings"]["key"] == done["metrics"]["pool_embeddings"]["key"]
    assert embedded.http.delete(f"/v1/pools/{pool['id']}").status_code == 204  # the jobs ended: the pool is free again
