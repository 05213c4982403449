"""ClipforgeClient and `clipforge jobs ...` against the real API over HTTP."""

from __future__ import annotations

import hashlib
import json

import pytest

from cli.main import main
from client import ApiError, ClipforgeClient
from service import jobs as repo
from service.db import session_scope
from service.ids import new_id
from service.storage import artifact_key
from tests.servers import ApiThread, settings_for


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with ApiThread(settings_for(tmp_path_factory.mktemp("client"))) as server:
        yield server


@pytest.fixture
def client(api):
    with ClipforgeClient(api.url) as client:
        yield client


def _finished_job_with_artifacts(api, artifacts: dict[str, bytes]) -> str:
    """A job as a worker leaves it: succeeded, its artifacts stored and recorded (the worker tests cover the real run)."""
    factory, storage = api.app.state.session_factory, api.app.state.storage
    job_id = new_id("job")
    with session_scope(factory) as session:
        repo.create_job(session, job_id=job_id, spec={"teacher": "shapes-mini", "classes": [{"name": "a"}, {"name": "b"}], "seed": 1})
    with session_scope(factory) as session:
        repo.claim(session, job_id, "test-worker", 30, 3)
    stored = [(name, "application/octet-stream", storage.put(artifact_key(job_id, name), data)) for name, data in artifacts.items()]
    with session_scope(factory) as session:
        repo.finish(session, job_id, "test-worker", repo.SUCCEEDED, artifacts=stored)
    return job_id


def test_submit_get_list_cancel_delete(client):
    job = client.submit({"classes": ["cat", "dog"], "seed": 3}, idempotency_key="client-1")
    assert job.status == "queued" and job.seed == 3 and job.spec["teacher"] == "shapes-mini"
    assert client.submit({"classes": ["cat", "dog"], "seed": 3}, idempotency_key="client-1").id == job.id
    assert client.get_job(job.id) == job
    assert job.id in [j.id for j in client.iter_jobs(page_size=1)]
    assert client.cancel(job.id).status == "cancelled"
    assert [e.status for e in client.iter_events(job.id)] == ["queued", "cancelled"]
    with pytest.raises(ApiError) as error:
        client.wait(job.id)
    assert error.value.code == "cancelled"
    client.delete(job.id)
    with pytest.raises(ApiError) as error:
        client.get_job(job.id)
    assert (error.value.status, error.value.code) == (404, "job_not_found")


def test_errors_carry_code_message_and_status(client):
    with pytest.raises(ApiError) as error:
        client.submit({"classes": ["only"]})
    assert (error.value.status, error.value.code) == (422, "too_few_classes") and "2 classes" in error.value.message
    with pytest.raises(ApiError) as error:
        ClipforgeClient("http://127.0.0.1:9").teachers()
    assert (error.value.status, error.value.code) == (0, "unreachable")


def test_submit_with_image_files(client, tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), "blue").save(tmp_path / "a.png")
    job = client.submit({"classes": ["a", "b"]}, images={"a": [tmp_path / "a.png", (tmp_path / "a.png").read_bytes()]})
    assert len(job.spec["classes"][0]["images"]) == 2


def test_download_verifies_length_and_checksum(client, api, tmp_path):
    content = bytes(range(256)) * 1000
    job_id = _finished_job_with_artifacts(api, {"student.onnx": content})
    [artifact] = client.artifacts(job_id).data
    assert artifact.sha256 == hashlib.sha256(content).hexdigest() and artifact.size == len(content)
    path = client.download(job_id, "student.onnx", tmp_path)
    assert path.read_bytes() == content
    # A file that no longer matches its recorded checksum is refused, and nothing is left behind.
    (api.app.state.settings.storage_root / "artifacts" / job_id / "student.onnx").write_bytes(b"x" * len(content))
    with pytest.raises(ApiError) as error:
        client.download(job_id, "student.onnx", tmp_path / "again.onnx")
    assert error.value.code == "checksum_mismatch" and not (tmp_path / "again.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.onnx"]


def test_catalogue_and_health(client):
    assert "shapes-mini" in [t.name for t in client.teachers().data]  # the bundled default, beside any other bundled teacher
    assert "tiny_cnn" in [s.name for s in client.students().data]
    assert client.health().status == "ok" and client.ready().status == "ready"


def test_jobs_command_line(api, tmp_path, capsys):
    url = ["--url", api.url]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"synthesis": {"steps": 5}, "device": "cuda"}))
    assert main(["jobs", "submit", *url, "--config", str(spec), "--classes", "circle,star", "--seed", "9", "--json"]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["spec"]["synthesis"]["steps"] == 5 and job["seed"] == 9 and job["spec"]["classes"][1]["name"] == "star"
    assert main(["jobs", "status", *url, job["id"]]) == 0
    assert job["id"] in capsys.readouterr().out
    assert main(["jobs", "list", *url, "--status", "queued", "--limit", "1"]) == 0
    assert capsys.readouterr().out.startswith("job_")
    assert main(["jobs", "cancel", *url, job["id"]]) == 0
    assert capsys.readouterr().out.strip() == f"{job['id']} cancelled"
    assert main(["jobs", "wait", *url, job["id"], "--quiet"]) == 1  # a cancelled job is a failed wait
    assert main(["jobs", "events", *url, job["id"], "--json"]) == 0
    assert [json.loads(line)["status"] for line in capsys.readouterr().out.splitlines()] == ["queued", "cancelled"]
    assert main(["jobs", "delete", *url, job["id"]]) == 0
    assert main(["jobs", "status", *url, job["id"]]) == 2
    assert "error [job_not_found]" in capsys.readouterr().err
    finished = _finished_job_with_artifacts(api, {"metrics.json": b"{}", "samples.png": b"png"})
    assert main(["jobs", "wait", *url, finished, "--quiet"]) == 0
    assert main(["jobs", "download", *url, finished, "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json", "samples.png"]
    assert main(["jobs", "submit", *url, "--classes", "solo"]) == 2
    assert "error [too_few_classes]" in capsys.readouterr().err


def test_pools_with_the_client_and_the_command_line(client, api, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "shop" / "nested"
    folder.mkdir(parents=True)
    for index, color in enumerate(("red", "green", "blue")):
        Image.new("RGB", (12, 12), color).save(folder / f"{index}.png")
    (folder / "notes.txt").write_text("not an image: skipped by the command, never sent")
    assert main(["pools", "create", "--url", api.url, "--images", str(tmp_path / "shop"), "--name", "shop", "--json"]) == 0
    pool = json.loads(capsys.readouterr().out)
    assert pool["image_count"] == 3 and pool["name"] == "shop"
    assert client.get_pool(pool["id"]).image_count == 3 and pool["id"] in [p.id for p in client.pools().data]
    assert main(["pools", "show", "--url", api.url, pool["id"], "--thumbnails", str(tmp_path / "grid.png")]) == 0
    assert f"{pool['id']} 'shop': 3 images" in capsys.readouterr().out and Image.open(tmp_path / "grid.png").format == "PNG"
    assert main(["pools", "list", "--url", api.url]) == 0 and pool["id"] in capsys.readouterr().out
    made = client.create_pool(images=[(folder / "0.png").read_bytes()] * 2)
    assert (made.image_count, made.duplicates) == (1, 1)
    client.delete_pool(made.id)
    assert main(["pools", "delete", "--url", api.url, pool["id"]]) == 0
    with pytest.raises(ApiError) as missing:
        client.get_pool(pool["id"])
    assert missing.value.code == "pool_not_found" and missing.value.status == 404
    assert main(["pools", "create", "--url", api.url, "--images", str(tmp_path / "empty")]) == 2
    assert "error [invalid_images]" in capsys.readouterr().err


def test_a_pool_created_with_a_teacher_with_the_client_and_the_command_line(client, api, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "shop"
    folder.mkdir()
    for index, color in enumerate(("red", "green")):
        Image.new("RGB", (12, 12), color).save(folder / f"{index}.png")
    made = client.create_pool(images=sorted(folder.iterdir()), teacher="shapes-mini", views=2)
    [embedding] = made.embeddings
    assert (embedding.teacher, embedding.views, embedding.status) == ("shapes-mini", 2, "queued")
    assert client.get_pool(made.id).embeddings == [embedding]
    with pytest.raises(ApiError) as unknown:
        client.create_pool(images=sorted(folder.iterdir()), teacher="no-such-teacher")
    assert unknown.value.code == "unknown_teacher"
    assert main(["pools", "create", "--url", api.url, "--images", str(folder), "--teacher", "shapes-mini"]) == 0
    out = capsys.readouterr().out
    assert "queued pemb_" in out and "shapes-mini (4 views)" in out
    assert main(["pools", "show", "--url", api.url, made.id]) == 0
    assert f"embedding {embedding.id} by shapes-mini (2 views): queued" in capsys.readouterr().out
