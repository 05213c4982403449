"""No silent chance students: a job whose generator "auto" finds no decoder (an open_clip teacher the operator configured,
none named in the spec) is refused at submission with ``no_image_prior`` and what to do; Fourier asked for by name is
accepted with a warning; every job says which generator, decoder and prior it uses."""

from __future__ import annotations

import pytest

from tests.api.conftest import png_bytes
from tests.servers import ApiThread, settings_for

OPEN_CLIP = "RN50@/models/my-rn50.pt"  # configured by the operator: a real architecture, no paired decoder


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    with ApiThread(settings_for(tmp_path_factory.mktemp("prior"), extra_teachers=[OPEN_CLIP])) as server, server.client() as client:
        yield client


def _jobs(http) -> int:
    return len(http.get("/v1/jobs", params={"limit": 100}).json()["data"])


def test_auto_without_a_decoder_is_refused_with_what_to_do_and_nothing_queued(http):
    before = _jobs(http)
    response = http.post("/v1/jobs", json={"teacher": OPEN_CLIP, "classes": ["cat", "dog"]})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "no_image_prior" and error["details"][0]["teacher"] == OPEN_CLIP
    assert "clipforge decoders pull" in error["message"] and '"generator": "fourier"' in error["message"]
    assert "image pool" in error["message"]
    assert _jobs(http) == before


def test_fourier_by_name_runs_with_a_warning_in_the_201_and_the_job(http):
    body = {"teacher": OPEN_CLIP, "classes": ["cat", "dog"], "synthesis": {"generator": "fourier"}}
    created = http.post("/v1/jobs", json=body)
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["spec"]["synthesis"]["generator"] == "fourier" and job["spec"]["synthesis"]["decoder"] is None
    assert len(job["warnings"]) == 1 and "near chance" in job["warnings"][0]
    assert http.get(f"/v1/jobs/{job['id']}").json()["warnings"] == job["warnings"]


def test_a_job_names_the_generator_decoder_and_prior_it_uses(http):
    job = http.post("/v1/jobs", json={"classes": ["circle", "square"]}).json()  # the default teacher, paired with shapes-vae
    synthesis = job["spec"]["synthesis"]
    assert (synthesis["generator"], synthesis["decoder"], synthesis["prior"]) == ("decoder", "shapes-vae", "fitted")
    assert job["warnings"] == []
    named = http.post("/v1/jobs", json={"teacher": OPEN_CLIP, "classes": ["cat", "dog"], "synthesis": {"decoder": "shapes-vae"}})
    assert named.status_code == 201 and named.json()["spec"]["synthesis"]["decoder"] == "shapes-vae"


def test_an_image_pool_is_the_prior_of_a_teacher_without_a_decoder(http):
    files = [("images", (f"{c}.png", png_bytes(color=c), "image/png")) for c in ("red", "blue", "green")]
    pool = http.post("/v1/pools", files=files).json()
    created = http.post("/v1/jobs", json={"teacher": OPEN_CLIP, "classes": ["cat", "dog"], "synthesis": {"pool": pool["id"]}})
    assert created.status_code == 201, created.text
    job = created.json()
    assert (job["spec"]["synthesis"]["generator"], job["spec"]["synthesis"]["decoder"]) == ("pool", None) and job["warnings"] == []
    refused = http.post("/v1/jobs", json={"teacher": OPEN_CLIP, "classes": ["cat", "dog"], "synthesis": {"generator": "pool"}})
    error = refused.json()["error"]
    assert refused.status_code == 422 and error["code"] == "invalid_spec" and "draws the images of synthesis.pool" in error["message"]
