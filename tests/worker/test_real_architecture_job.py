"""The real path end to end through the service, on random weights (pretrained ones cannot be downloaded here): a
teacher of open_clip's own ViT-B-32 architecture (its config, at 64 px so a CPU test can afford it) paired with a
random-weight TAESD (diffusers' AutoencoderTiny) whose prior was built over a folder of images, a job submitted over
HTTP, run by a real worker process, and its ONNX student evaluated with onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from core.generators.priors import build_prior
from core.teachers.clip_config import TeacherConfig, build_clip
from tests.core.test_decoder_training import write_images
from tests.core.test_diffusers_decoders import random_taesd
from tests.servers import TINY_SPEC
from tests.worker.conftest import open_service

IMAGE_SIZE = 32  # ViT-B-32 sees one patch: the architecture whole, the compute small (TAESD decodes cost 4x at 64 px)


def random_vit_b32_teacher(folder, decoder: str) -> None:
    """A cached clipforge teacher with open_clip's ViT-B-32 config at IMAGE_SIZE and random weights, paired with
    ``decoder`` (a folder's path), written as `clipforge teachers` reads one."""
    model = open_clip.get_model_config("ViT-B-32")
    model["vision_cfg"]["image_size"] = IMAGE_SIZE
    config = {"name": folder.name, "description": "random ViT-B-32", "model": model, "decoder": decoder}
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    clip = build_clip(TeacherConfig.from_file(folder / "config.json"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in clip.state_dict().items()}, str(folder / "weights.safetensors"))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-architecture")
    cache = root / "cache"
    decoder = random_taesd(cache / "decoders" / "taesd-random", image_size=IMAGE_SIZE)
    build_prior(str(decoder), write_images(root / "photos", 12), "fitted")  # a user's own unlabelled images
    random_vit_b32_teacher(cache / "teachers" / "vit-b-32-random", str(decoder))
    with open_service(root / "service", cache_dir=cache) as running:
        running.start_worker()
        yield running, decoder


def test_a_job_on_a_vit_b32_teacher_with_a_taesd_decoder_succeeds_end_to_end(service, tmp_path):
    running, decoder = service
    job = running.submit({**TINY_SPEC, "teacher": "vit-b-32-random", "classes": ["a dog", "a cat", "a car"], "seed": 2})
    synthesis = job["spec"]["synthesis"]
    assert (synthesis["generator"], synthesis["decoder"], synthesis["prior"]) == ("decoder", str(decoder), "fitted")
    assert job["warnings"] == []
    done = running.wait_finished(job["id"], timeout=600)
    assert done["status"] == "succeeded", done
    print("stage seconds", done["metrics"]["stage_seconds"])  # pytest -s shows where the job's time went
    # No reference cost for this teacher at submission; its worker timed it and estimated the job (core.estimate).
    assert job["estimated_seconds"] is None and done["estimated_seconds"] > 0
    assert done["metrics"]["generator"] == {"name": "decoder", "decoder": str(decoder), "prior": "fitted"}
    assert set(done["metrics"]["coverage"]) == {"a dog", "a cat", "a car"}
    onnx_path = tmp_path / "student.onnx"
    onnx_path.write_bytes(running.http.get(f"/v1/jobs/{job['id']}/artifacts/student.onnx").content)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).random((2, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    logits = session.run(None, {session.get_inputs()[0].name: pixels})[0]
    assert logits.shape == (2, 3) and np.isfinite(logits).all()
