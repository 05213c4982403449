"""The teacher's image tower under onnxruntime (core.teachers.onnx_tower) on small random-weight instances of real
architectures (open_clip's ViT-B-32 and RN50 configs) and the bundled shapes-mini: fp32 reproduces the torch teacher,
INT8 stays close, the cache is reused and rebuilt, and the INT8 tower is chosen only when it measurably agrees."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch
import torch.nn.functional as F

from bench.tasks import get_task
from bench.teacher_speed import random_teacher
from core.export import MIN_OPSET
from core.teachers.onnx_tower import (
    CACHE_FOLDER,
    MIN_COSINE,
    MIN_TOP1,
    OnnxImageTower,
    cached_tower,
    choose_image_encoder,
    export_image_tower,
    tower_agreement,
    tower_path,
)

FP32_ATOL = 1e-4
INT8_MIN_COSINE = 0.99  # what INT8 showed here: >= 0.999 on every tower below


def pixels(count: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def shape_job():
    """A shapes job's own images (shape8 renders) and classes, as choose_image_encoder gets them."""
    task = get_task("shape8")
    images, _ = task.render("test", 32, size=32)
    return images, [c.text for c in task.classes]


@pytest.fixture(scope="module")
def vit():
    """open_clip's ViT-B-32 at 32 px (one patch: the whole architecture, little compute), with its towers cached."""
    return random_teacher("ViT-B-32", image_size=32)


@pytest.fixture(scope="module")
def vit_cache(vit, tmp_path_factory):
    cache = tmp_path_factory.mktemp("vit-cache")
    cached_tower(vit, cache, "int8")  # exports the fp32 tower on the way
    return cache


@pytest.fixture(scope="module")
def teachers(vit, vit_cache, shapes_teacher, tmp_path_factory):
    rn50 = random_teacher("RN50", image_size=64)
    return {"ViT-B-32": (vit, vit_cache), "RN50": (rn50, tmp_path_factory.mktemp("rn50-cache")), "shapes-mini": (shapes_teacher, None)}


@pytest.mark.parametrize("name", ["ViT-B-32", "RN50", "shapes-mini"])
def test_the_fp32_tower_reproduces_the_torch_teacher_and_int8_stays_close(name, teachers, tmp_path):
    teacher, cache = teachers[name]
    cache = cache or tmp_path
    fp32, int8 = cached_tower(teacher, cache, "fp32"), cached_tower(teacher, cache, "int8")
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    images = pixels(8, teacher.image_size + 16)  # at another size: the tower resizes as the teacher does
    with torch.no_grad():
        expected = teacher.encode_image(images)
    actual = fp32.encode(images)
    assert actual.dtype == torch.float32 and actual.device.type == "cpu" and actual.shape == expected.shape
    assert float((actual - expected).abs().max()) < FP32_ATOL
    assert torch.allclose(actual.norm(dim=-1), torch.ones(len(images)), atol=1e-5)
    classes = F.normalize(torch.randn(5, expected.shape[1], generator=torch.Generator().manual_seed(1)), dim=-1)
    agreement = tower_agreement(teacher.encode_image, int8.encode, images, classes, teacher.logit_scale)
    print(name, "INT8 against torch:", agreement)  # pytest -s shows the figures
    assert agreement["images"] == 8 and agreement["cosine_min"] >= INT8_MIN_COSINE
    assert torch.allclose(int8.encode(images).norm(dim=-1), torch.ones(len(images)), atol=1e-5)


def test_the_export_is_deterministic_with_the_named_dynamic_input_and_output(shapes_teacher):
    first, second = export_image_tower(shapes_teacher), export_image_tower(shapes_teacher)
    assert first == second
    graph = onnx.load_model_from_string(first).graph
    assert [i.name for i in graph.input] == ["pixels"] and [o.name for o in graph.output] == ["embeddings"]
    batch, channels, height, width = graph.input[0].type.tensor_type.shape.dim
    assert batch.dim_param and (channels.dim_value, height.dim_value, width.dim_value) == (3, 32, 32)
    assert next(o.version for o in onnx.load_model_from_string(first).opset_import if o.domain in ("", "ai.onnx")) == MIN_OPSET
    tower = OnnxImageTower(first, shapes_teacher.image_size, "fp32")
    assert tower.encode(pixels(1, 32)).shape == (1, 128) and tower.encode(pixels(0, 32)).shape == (0, 128)


def test_the_tower_runs_large_inputs_in_batches_of_its_own(shapes_teacher):
    tower = OnnxImageTower(export_image_tower(shapes_teacher), shapes_teacher.image_size, "fp32", batch_size=4)
    images = pixels(10, 32)  # three onnxruntime calls: 4, 4 and 2 images
    with torch.no_grad():
        assert float((tower.encode(images) - shapes_teacher.encode_image(images)).abs().max()) < FP32_ATOL


def test_the_cache_is_reused_and_rebuilt_when_onnxruntime_cannot_read_it(shapes_teacher, tmp_path):
    tower = cached_tower(shapes_teacher, tmp_path, "int8")
    fp32_file, int8_file = tower_path(shapes_teacher, tmp_path, "fp32"), tower_path(shapes_teacher, tmp_path, "int8")
    assert int8_file.parent == tmp_path / CACHE_FOLDER and int8_file.name.endswith("-int8.onnx") and len(int8_file.stem) == 40 + 5
    assert sorted(p.name for p in int8_file.parent.iterdir()) == sorted([fp32_file.name, int8_file.name])  # no temp files
    written = {path: (path.stat().st_ino, path.stat().st_mtime_ns, path.read_bytes()) for path in (fp32_file, int8_file)}
    images = pixels(4, 32)
    expected = tower.encode(images)

    again = cached_tower(shapes_teacher, tmp_path, "int8")  # reused: neither file is written again
    assert {path: (path.stat().st_ino, path.stat().st_mtime_ns, path.read_bytes()) for path in written} == written
    assert torch.equal(again.encode(images), expected)

    int8_file.write_bytes(written[int8_file][2][:1000])  # truncated: onnxruntime cannot load it
    fp32_file.write_bytes(b"not an onnx file")
    rebuilt = cached_tower(shapes_teacher, tmp_path, "int8")
    assert int8_file.read_bytes() == written[int8_file][2] and fp32_file.read_bytes() == written[fp32_file][2]
    assert torch.equal(rebuilt.encode(images), expected)


def test_int8_is_chosen_when_it_agrees_with_the_teacher(shapes_teacher, shape_job, tmp_path):
    images, classes = shape_job
    classifier = shapes_teacher.class_embeddings(classes)
    encode, record = choose_image_encoder(shapes_teacher, images, classifier, cache_dir=tmp_path)
    assert (record["backend"], record["precision"]) == ("onnxruntime", "int8"), record
    assert (record["min_cosine"], record["min_top1"]) == (MIN_COSINE, MIN_TOP1)
    agreement = record["agreement"]
    assert agreement["images"] == len(images) and agreement["cosine_min"] >= MIN_COSINE and agreement["top1"] >= MIN_TOP1
    assert "agrees" in record["reason"]
    assert torch.equal(encode(images), cached_tower(shapes_teacher, tmp_path, "int8").encode(images))


def test_int8_is_not_chosen_when_its_cosine_falls_short(shapes_teacher, shape_job, tmp_path):
    """At min_cosine 1.0, INT8's real per-image cosine (< 1: it rounds its weights) fails the bar."""
    images, classes = shape_job
    classifier = shapes_teacher.class_embeddings(classes)
    encode, record = choose_image_encoder(shapes_teacher, images, classifier, cache_dir=tmp_path, min_cosine=1.0)
    assert (record["backend"], record["precision"], record["min_cosine"]) == ("onnxruntime", "fp32", 1.0), record
    assert record["agreement"]["cosine_min"] < 1.0 and record["agreement"]["top1"] == 1.0
    assert "cosine_min" in record["reason"] and "top1" not in record["reason"] and "fp32" in record["reason"]
    with torch.no_grad():
        assert float((encode(images) - shapes_teacher.encode_image(images)).abs().max()) < FP32_ATOL


def test_int8_is_not_chosen_when_it_flips_the_top1_class(vit, vit_cache):
    """Embeddings within the cosine bar, but classes so close that INT8's error changes the label.

    Each image gets two classes on either side of its torch embedding along INT8's own error (orthogonal part): torch
    prefers the nearer one by a hair (cosine 1/sqrt(1 + 0.09^2) against 1/sqrt(1 + 0.1^2)), INT8 is pushed to the other.
    A job whose classes are that close would have its labels decided by the quantisation: fp32 must serve.
    """
    images = pixels(16, 32)
    int8 = cached_tower(vit, vit_cache, "int8")
    with torch.no_grad():
        reference = vit.encode_image(images)
    error = int8.encode(images) - reference
    along = F.normalize(error - (error * reference).sum(-1, keepdim=True) * reference, dim=-1)
    classifier = torch.cat([F.normalize(reference + 0.1 * along, dim=-1), F.normalize(reference - 0.09 * along, dim=-1)])

    encode, record = choose_image_encoder(vit, images, classifier, cache_dir=vit_cache)
    agreement = record["agreement"]
    print("ViT-B-32 INT8 on close classes:", agreement)
    assert (record["backend"], record["precision"]) == ("onnxruntime", "fp32"), record
    assert agreement["cosine_min"] >= MIN_COSINE and agreement["top1"] < MIN_TOP1  # the label, not the cosine, decided
    assert "top1" in record["reason"] and "cosine_min" not in record["reason"]
    with torch.no_grad():
        assert float((encode(images) - reference).abs().max()) < FP32_ATOL


def test_a_teacher_off_the_cpu_keeps_torch(shapes_teacher, tmp_path):
    elsewhere = copy.deepcopy(shapes_teacher).to("meta")  # any non-CPU device: CUDA in a real worker
    encode, record = choose_image_encoder(elsewhere, pixels(2, 32), torch.eye(2, 128), cache_dir=tmp_path)
    assert record["backend"] == "torch" and "meta" in record["reason"] and encode == elsewhere.encode_image
    assert not (tmp_path / CACHE_FOLDER).exists()


def test_tower_agreement_of_an_encoder_with_itself_is_perfect(shapes_teacher):
    classifier = shapes_teacher.class_embeddings(["circle", "square"])
    agreement = tower_agreement(shapes_teacher.encode_image, shapes_teacher.encode_image, pixels(3, 32), classifier, 100.0)
    assert agreement["images"] == 3 and agreement["top1"] == 1.0 and agreement["max_abs_logit_difference"] == 0.0
    assert agreement["cosine_min"] == pytest.approx(1.0, abs=1e-6) and agreement["cosine_mean"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        tower_agreement(shapes_teacher.encode_image, shapes_teacher.encode_image, pixels(0, 32), classifier, 100.0)
