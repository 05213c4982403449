"""A pool created with a teacher, on a real worker process (the embedded transport): the worker builds the teacher's
embeddings of the pool before any job, and the pool's first job loads them instead of running the teacher on it; a
teacher the worker cannot load fails the embedding with its code, never leaves it queued or running."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.servers import TINY_SPEC, wait_until
from tests.worker.conftest import Service, open_service

POOL_IMAGES = 8


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    # "ghost" is a teacher the API accepts (the operator configured it) but no worker can load.
    with open_service(tmp_path_factory.mktemp("pool-embedding"), extra_teachers=["ghost"]) as service:
        service.start_worker()
        yield service


def _pool_files() -> list[tuple[str, tuple[str, bytes, str]]]:
    from bench.tasks import get_task

    renders, _ = get_task("shape8").render("val", POOL_IMAGES)  # unlabelled images of the domain, as a user's photos
    files = []
    for index, pixels in enumerate(renders):
        buffer = io.BytesIO()
        Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(buffer, format="PNG")
        files.append(("images", (f"{index}.png", buffer.getvalue(), "image/png")))
    return files


def _ended_embedding(service: Service, pool_id: str, timeout: float) -> dict:
    def ended() -> dict | None:
        [embedding] = service.http.get(f"/v1/pools/{pool_id}").json()["embeddings"]
        return embedding if embedding["status"] in ("succeeded", "failed") else None

    try:
        return wait_until(ended, timeout, 0.2, "pool embedding ended")  # type: ignore[return-value]
    except TimeoutError:
        log = (service.data_dir / "worker.log").read_text()[-3000:] if (service.data_dir / "worker.log").exists() else ""
        raise AssertionError(f"not ended: {service.http.get(f'/v1/pools/{pool_id}').json()}\nworker log:\n{log}") from None


def test_the_worker_embeds_the_pool_ahead_and_its_first_job_reuses_the_embeddings(service):
    created = service.http.post("/v1/pools", files=_pool_files(), data={"teacher": "shapes-mini"})
    assert created.status_code == 201, created.text
    pool = created.json()
    assert [e["status"] for e in pool["embeddings"]] == ["queued"]
    embedding = _ended_embedding(service, pool["id"], timeout=120)
    assert embedding["status"] == "succeeded", embedding
    result = embedding["result"]
    assert (result["status"], result["images"], result["views"], result["encoder"]) == ("built", POOL_IMAGES, 4, "torch")
    assert embedding["attempts"] == 1 and embedding["error"] is None and embedding["finished_at"] is not None
    assert len(list((service.storage / "pool-embeddings").iterdir())) == 1  # where every job on the pool looks
    synthesis = {**TINY_SPEC["synthesis"], "pool": pool["id"]}
    job = service.submit({**TINY_SPEC, "synthesis": synthesis, "classes": ["circle", "square"], "seed": 2})
    done = service.wait_finished(job["id"], timeout=180)
    assert done["status"] == "succeeded", done
    assert done["metrics"]["pool_embeddings"]["status"] == "reused"  # the job did not run the teacher on the pool
    assert done["metrics"]["pool_embeddings"]["key"] == result["key"]
    assert service.http.delete(f"/v1/pools/{pool['id']}").status_code == 204


def test_a_teacher_the_worker_cannot_load_fails_the_embedding_with_its_code(service):
    pool = service.http.post("/v1/pools", files=_pool_files()[:2], data={"teacher": "ghost", "views": "1"}).json()
    embedding = _ended_embedding(service, pool["id"], timeout=60)
    assert embedding["status"] == "failed" and embedding["error"]["code"] == "unknown_teacher", embedding
    assert "ghost" in embedding["error"]["message"] and embedding["result"] is None
    assert service.http.delete(f"/v1/pools/{pool['id']}").status_code == 204  # ended: the pool is free
