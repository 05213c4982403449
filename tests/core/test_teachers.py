"""Every teacher source, without the network: pretrained tags are served from a cache the test writes."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from bench.evaluate import zero_shot
from core.devices import DeviceUnavailableError
from core.teachers import TEACHERS, TeacherUnavailableError, UnknownTeacherError, create_teacher, list_teachers, sources
from core.teachers.sources import BUNDLED_DIR, cached_pretrained_file, parse_open_clip_name

HF_REPO = "timm/resnet50_clip.openai"  # where open_clip looks for RN50/openai


def test_bundled_teacher_encodes_unit_vectors(shapes_teacher):
    assert shapes_teacher.image_size == 32
    images = torch.rand(4, 3, 32, 32)
    image_features = shapes_teacher.encode_image(images)
    text_features = shapes_teacher.encode_text(["a red circle", "a blue star"])
    assert image_features.shape == (4, 128) and text_features.shape == (2, 128)
    assert torch.allclose(image_features.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(text_features.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert 1.0 < shapes_teacher.logit_scale <= 100.0


def test_encode_image_is_differentiable_in_the_pixels(shapes_teacher):
    pixels = torch.rand(2, 3, 48, 48, requires_grad=True)  # resized to 32 inside
    shapes_teacher.encode_image(pixels).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in shapes_teacher.parameters())


@pytest.mark.parametrize(("task", "target"), [("shape8", 0.85), ("color8", 0.95), ("combo", 0.75)])
def test_bundled_teacher_meets_zero_shot_targets(shapes_teacher, task, target):
    result = zero_shot(shapes_teacher, task, split="test", images=2000)
    assert result.accuracy >= target, result


def test_bundled_teacher_misreads_the_ambiguous_names(shapes_teacher):
    ambiguous = zero_shot(shapes_teacher, "ambiguous", split="test", images=800).accuracy
    shape8 = zero_shot(shapes_teacher, "shape8", split="test", images=800).accuracy
    assert ambiguous < shape8 - 0.3


def test_teacher_installed_in_the_cache_dir(tmp_path):
    folder = tmp_path / "teachers" / "my-shapes"
    shutil.copytree(BUNDLED_DIR / "shapes-mini", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "name": "my-shapes"}))
    teacher = create_teacher("my-shapes", device="cpu", cache_dir=tmp_path)
    assert teacher.name == "my-shapes"
    assert "my-shapes" in [t.name for t in list_teachers(tmp_path)]


def test_registered_teacher_factory(shapes_teacher):
    TEACHERS.register("test-registered")(lambda device: shapes_teacher.to(device))
    assert create_teacher("test-registered", device="cpu") is shapes_teacher


@pytest.fixture(scope="module")
def rn50_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised RN50 in open_clip's checkpoint format (fp16 safetensors)."""
    model = open_clip.create_model("RN50", pretrained=None, force_quick_gelu=True)
    path = tmp_path_factory.mktemp("ckpt") / "open_clip_model.safetensors"
    save_file({k: v.half().contiguous() if v.is_floating_point() else v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _write_hf_cache(cache_dir: Path, checkpoint: Path) -> Path:
    """Lay the file out exactly as huggingface_hub's cache does."""
    repo = cache_dir / ("models--" + HF_REPO.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    target = snapshot / "open_clip_model.safetensors"
    shutil.copy(checkpoint, target)
    return target


def test_pretrained_tag_loads_from_the_cache_without_network(tmp_path, rn50_checkpoint, monkeypatch):
    target = _write_hf_cache(tmp_path, rn50_checkpoint)
    # Any network access would be a bug: make the probe fail loudly.
    monkeypatch.setattr(sources, "network_reachable", lambda *a, **k: pytest.fail("network probed for a cached tag"))
    assert cached_pretrained_file(parse_open_clip_name("RN50/openai"), tmp_path) == target
    teacher = create_teacher("RN50/openai", device="cpu", cache_dir=tmp_path)
    assert teacher.image_size == 224 and teacher.name == "RN50/openai"
    assert teacher.encode_text(["a photo of a dog."]).shape == (1, 1024)
    assert teacher.encode_image(torch.rand(1, 3, 64, 64)).shape == (1, 1024)
    assert any(t.name == "RN50/openai" and t.available for t in list_teachers(tmp_path))


def test_local_checkpoint_with_model_name(rn50_checkpoint):
    by_suffix = create_teacher(f"RN50@{rn50_checkpoint}", device="cpu")
    by_argument = create_teacher("RN50", checkpoint=rn50_checkpoint, device="cpu")
    tokens = ["a photo of a cat."]
    assert torch.allclose(by_suffix.encode_text(tokens), by_argument.encode_text(tokens))
    with pytest.raises(TeacherUnavailableError, match="does not exist"):
        create_teacher("RN50@/nonexistent/file.pt", device="cpu")


def test_uncached_tag_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    # A reserved, never-resolving host stands in for the hub, so the test never downloads.
    monkeypatch.setattr(sources, "HF_HOST", "hub.clipforge-test.invalid")
    start = time.monotonic()
    with pytest.raises(TeacherUnavailableError) as error:
        create_teacher("ViT-B-32/openai", device="cpu", cache_dir=tmp_path)
    assert time.monotonic() - start < 5.0
    message = str(error.value)
    assert "ViT-B-32/openai" in message and str(tmp_path) in message
    assert "clipforge teachers pull ViT-B-32/openai" in message
    assert error.value.code == "teacher_unavailable"


def test_network_probe_is_bounded_in_time():
    start = time.monotonic()
    assert sources.network_reachable("hub.clipforge-test.invalid", timeout=1.0) is False
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("name", ["no-such-teacher", "NoSuchModel/openai", "ViT-B-32/no-such-tag", "NoSuchModel@/tmp/x.pt"])
def test_unknown_teachers_are_named(name):
    with pytest.raises(UnknownTeacherError) as error:
        create_teacher(name, device="cpu")
    assert error.value.code == "unknown_teacher"


def test_cuda_request_without_cuda_is_an_error_not_a_fallback():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceUnavailableError):
        create_teacher("shapes-mini", device="cuda")
