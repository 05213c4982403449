"""A job with the user's unlabelled images (core.pools): a seeded held-out split, pool images in the distillation
batches (labelled by the teacher), and the student's agreement with the teacher on the held-out ones in the metrics."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import ValidationError

from bench.tasks import get_task
from core.augment import apply_views
from core.bank import teacher_sha256
from core.distill import DISTILL_AUGMENT
from core.generators.decoder import decoder_generator, find_decoder_dir, load_encoder_from
from core.generators.priors import prior_of_images
from core.pipeline import customize, pool_views, prepare
from core.pools import (
    MAX_HELD_OUT,
    MIN_PRIOR_IMAGES,
    PoolEmbeddings,
    PoolEmbeddingsDamagedError,
    PoolEmbeddingsKey,
    PoolSource,
    split_indices,
)
from core.spec import CustomizeSpec, InvalidSharesError, resolve
from core.stored import storage_object_store
from service.storage import LocalStorage
from tests.core.test_pipeline import SMALL
from tests.servers import QUICK_EXPORT

POOL_ID = "pool_" + "0" * 26
CLASSES = ["circle", "square", "star"]


def _spec(**distillation) -> CustomizeSpec:
    body = {
        **SMALL,
        "classes": CLASSES,
        "synthesis": {**SMALL["synthesis"], "pool": POOL_ID},
        "export": {**QUICK_EXPORT, "formats": ["onnx"]},
    }
    return CustomizeSpec.model_validate({**body, "distillation": {**SMALL["distillation"], **distillation}})


def _photos(count: int, split: str = "val") -> torch.Tensor:
    images, _ = get_task("shape8").render(split, count)  # unlabelled renders of the world, as a user's photos
    return images[:count]


def test_the_split_is_seeded_disjoint_and_bounded():
    (train, held_out), (_, again), (_, other) = split_indices(40, 3), split_indices(40, 3), split_indices(40, 4)
    assert torch.equal(held_out, again) and not torch.equal(held_out, other)
    assert (len(train), len(held_out)) == (36, 4)
    assert set(train.tolist()) | set(held_out.tolist()) == set(range(40))
    assert len(split_indices(10_000, 0)[1]) == MAX_HELD_OUT
    with pytest.raises(ValueError, match="at least 2 images"):
        split_indices(1, 0)


def _train(pool: torch.Tensor, seed: int) -> torch.Tensor:
    return pool[split_indices(len(pool), seed)[0]]


def test_a_job_distils_on_the_pool_and_reports_agreement_on_its_held_out_images(shapes_teacher):
    pool = _photos(40)
    result = customize(_spec(pool_share=0.4), shapes_teacher, pool=pool)
    report = result.metrics["pool"]
    assert (report["images"], report["distilled_on"], report["held_out_images"], report["share"]) == (40, 36, 4, 0.4)
    assert 0.0 <= report["agreement"] <= 1.0 and sum(report["teacher_classes"]) == 4
    # 36 images to fit a prior on are too few: the decoder's own prior stays, and the metrics say why.
    assert result.metrics["generator"]["prior"] == "fitted"
    assert not result.metrics["generator"]["pool_prior"]["used"] and "fewer than" in result.metrics["generator"]["pool_prior"]["reason"]
    again = customize(_spec(pool_share=0.4), shapes_teacher, pool=pool)
    assert _same_weights(again.student, result.student)  # deterministic with a pool too
    other = customize(_spec(pool_share=0.4), shapes_teacher, pool=_photos(40, "test"))
    assert not _same_weights(other.student, result.student)  # the pool's images reach the student
    with pytest.raises(ValueError, match="names a pool"):
        customize(_spec(), shapes_teacher)


def _dark_pool(count: int) -> torch.Tensor:
    """A domain the decoder's own prior never draws: near-black images (Fashion-MNIST's garments are bright)."""
    return 0.05 * torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def test_a_prior_fitted_on_a_pool_draws_the_pools_domain():
    encoder = load_encoder_from(find_decoder_dir("fashion-vae"))
    prior = prior_of_images(encoder, _dark_pool(80))
    assert prior.components == 80 and prior.dimensions == 512  # a kernel density: one component per pool image
    rng = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    from_pool = decoder_generator(64, 32, rng=rng(), device=torch.device("cpu"), decoder="fashion-vae", prior=prior)()
    from_decoder = decoder_generator(64, 32, rng=rng(), device=torch.device("cpu"), decoder="fashion-vae")()
    assert float(from_pool.detach().mean()) < 0.1 < float(from_decoder.detach().mean())


def test_a_job_with_a_pool_synthesizes_from_the_pools_prior_when_the_decoder_has_an_encoder(shapes_teacher):
    pool = _dark_pool(MIN_PRIOR_IMAGES + 16)

    def spec(**synthesis) -> CustomizeSpec:
        body = _spec()
        return body.model_copy(update={"synthesis": body.synthesis.model_copy(update={"decoder": "fashion-vae", "steps": 0, **synthesis})})

    fitted = customize(spec(), shapes_teacher, pool=pool)
    assert fitted.metrics["generator"]["prior"] == "pool"
    assert fitted.metrics["generator"]["pool_prior"] == {"used": True, "images": len(_train(pool, 0)), "dimensions": 512}
    # The prior samples the teacher chose for the classes are dark like the pool, not the decoder's bright garments
    # (test_a_prior_fitted_on_a_pool_draws_the_pools_domain).
    assert float(fitted.surrogate.images.mean()) < 0.1
    kept = prepare(spec(pool_prior=False), shapes_teacher, pool=pool)
    assert dict(kept.synthesis.generator_options)["prior"] == "fitted" and kept.pool_prior is None


def test_the_pools_images_are_the_prior_of_the_pool_generator(shapes_teacher):
    pool = _photos(40)
    spec = _spec()
    synthesis = spec.synthesis.model_copy(update={"generator": "pool", "steps": 0})
    result = customize(spec.model_copy(update={"synthesis": synthesis}), shapes_teacher, pool=pool)
    train = _train(pool, spec.seed)
    assert result.metrics["generator"] == {"name": "pool", "images": len(train)}
    # No inversion steps: every surrogate image is one of the pool's distilled-on images (kept as bytes), the teacher's
    # pick per class, and knows which (its cached views stand in for teacher passes); a thin class's are inverted from
    # such a start.
    surrogate, kept = result.surrogate, (train * 255).round() / 255
    drawn = surrogate.sources >= 0
    assert int(drawn.sum()) > len(surrogate) // 2
    assert torch.equal(surrogate.images[drawn], kept[surrogate.sources[drawn]])
    distances = torch.cdist(surrogate.images.flatten(1), kept.flatten(1)).min(1).values
    assert float(distances.max()) < 0.1
    with pytest.raises(ValueError, match="no pool images were given"):
        customize(spec.model_copy(update={"synthesis": synthesis}), shapes_teacher)


def test_pool_shares_are_checked():
    with pytest.raises(ValidationError, match=r"pool_share draws from synthesis\.pool"):
        CustomizeSpec.model_validate({"classes": CLASSES, "distillation": {"pool_share": 0.3}})
    budget = resolve(_spec(), "cpu", shapes_facts())
    # The budget's share once a pool is named, in place of fresh prior samples (bench/results/pools.md).
    assert (budget.distillation.pool_share, budget.distillation.fresh_share) == (0.75, 0.0)
    assert resolve(_spec(fresh_share=0.2, pool_share=0.5), "cpu", shapes_facts()).distillation.fresh_share == 0.2
    assert resolve(CustomizeSpec.model_validate({"classes": CLASSES}), "cpu", shapes_facts()).distillation.pool_share == 0.0
    with pytest.raises(InvalidSharesError):
        resolve(_spec(pool_share=0.6, fresh_share=0.5), "cpu", shapes_facts())


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def shapes_facts():
    from tests.core.teacher_facts import SHAPES_MINI

    return SHAPES_MINI


# ------------------------------------------------------------------------------------------
# The pool's teacher passes, paid once (core.pools.PoolEmbeddings)
# ------------------------------------------------------------------------------------------


def _pool_spec(classes: list[str], **synthesis) -> CustomizeSpec:
    spec = _spec()
    body = spec.synthesis.model_copy(update={"generator": "pool", "steps": 0, "thin_class_steps": 0, "pool_views": 2, **synthesis})
    return spec.model_copy(update={"classes": CustomizeSpec.model_validate({"classes": classes}).classes, "synthesis": body})


class _CountingEncoder:
    """The real teacher's image tower, counting the images it embeds (what a job pays in teacher passes)."""

    def __init__(self, teacher) -> None:
        self.encode, self.images = teacher.encode_image, 0

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.images += len(pixels)
        return self.encode(pixels)


def test_a_pools_embeddings_are_built_once_then_reused_by_a_job_with_other_classes(shapes_teacher, tmp_path, monkeypatch):
    store = storage_object_store(LocalStorage(tmp_path))
    pool = _photos(48)
    counting = _CountingEncoder(shapes_teacher)
    monkeypatch.setattr(shapes_teacher, "encode_image", counting)
    first = customize(_pool_spec(CLASSES), shapes_teacher, pool=pool, pool_store=store)
    assert first.metrics["pool_embeddings"]["status"] == "built"
    built_passes = counting.images
    assert built_passes >= 48 * 3  # every image and its two views, once
    counting.images = 0
    second = customize(_pool_spec(["triangle", "heart"]), shapes_teacher, pool=pool, pool_store=store)
    assert second.metrics["pool_embeddings"]["status"] == "reused"
    # Coverage, the choice of surrogate images, distillation, the quality estimate, the unknown calibration and the
    # held-out agreement all read the cached embeddings: the teacher embeds no image in the second job.
    assert counting.images == 0, counting.images
    assert second.metrics["pool"]["held_out_images"] == 5 and second.metrics["bank"]["status"] == "pool"
    [stored] = list((tmp_path / "pool-embeddings").iterdir())
    assert stored.name.endswith(".emb") and len(list(tmp_path.rglob("*"))) == 2  # one object, no temporaries


def test_cached_pool_embeddings_are_the_teachers_of_each_image_and_view(shapes_teacher):
    pool = _photos(12)
    views = pool_views(_pool_spec(CLASSES), shapes_teacher, pool)
    cached = views.views
    assert cached.embeddings.dtype == torch.float16 and cached.views == 2 and len(cached) == 12
    index = torch.tensor([0, 5, 11])
    pixels = cached.pixels(index)
    assert torch.allclose(shapes_teacher.encode_image(pixels), cached.embeddings[index, 0].float(), atol=2e-3)
    view = apply_views(pixels, cached.view_params[index, 1], shapes_teacher.image_size)
    assert torch.allclose(shapes_teacher.encode_image(view), cached.embeddings[index, 2].float(), atol=2e-3)


def test_damaged_or_foreign_pool_embeddings_are_refused_and_rebuilt(shapes_teacher, tmp_path):
    store = storage_object_store(LocalStorage(tmp_path))
    pool = _photos(12)
    built = pool_views(_pool_spec(CLASSES), shapes_teacher, pool, store)
    [path] = list((tmp_path / "pool-embeddings").iterdir())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a partial write
    rebuilt = pool_views(_pool_spec(CLASSES), shapes_teacher, pool, store)
    assert rebuilt.summary["status"] == "rebuilt" and "sha256" in str(rebuilt.summary["reason"])
    assert path.read_bytes() == data and torch.equal(rebuilt.views.embeddings, built.views.embeddings)  # deterministic
    other = pool_views(_pool_spec(CLASSES), shapes_teacher, _photos(12, "test"))  # another pool's, under this one's name
    path.write_bytes(PoolEmbeddings(PoolEmbeddingsKey.from_json(_key_json(other, shapes_teacher)), *_tensors(other)).to_bytes())
    with pytest.raises(PoolEmbeddingsDamagedError, match="another pool"):
        PoolEmbeddings.from_bytes(path.read_bytes(), PoolEmbeddingsKey.from_json(_key_json(built, shapes_teacher)))
    assert pool_views(_pool_spec(CLASSES), shapes_teacher, pool, store).summary["status"] == "rebuilt"


def _key_json(views, teacher) -> dict:
    from core.pools import pool_embeddings_key

    size, count = teacher.image_size, views.views.views
    return pool_embeddings_key(
        views.source, teacher_sha256(teacher), teacher.name, size, views=count, augment=DISTILL_AUGMENT, encoder="torch"
    ).to_json()


def _tensors(views):
    return views.views.view_params, views.views.embeddings


def test_a_folder_pool_is_streamed_at_the_students_size_and_read_at_the_teachers_once(shapes_teacher, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(_photos(20)):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(folder / f"{i:03d}.png")
    source = PoolSource.from_folder(folder, 16)  # a student of 16 px: the pool is held at 16 px
    reads = []
    streamed = dataclasses.replace(source, read=lambda index, size: reads.append((index, size)) or source.read(index, size))
    spec = _pool_spec(CLASSES)
    spec = spec.model_copy(update={"student": spec.student.model_copy(update={"image_size": 16})})
    store = storage_object_store(LocalStorage(tmp_path / "store"))
    views = pool_views(spec, shapes_teacher, streamed, store)
    assert views.views.images.shape == (20, 3, 16, 16) and views.views.images.dtype == torch.uint8
    assert sorted(reads) == [(i, 32) for i in range(20)]  # each image decoded at the teacher's size once
    result = customize(spec, shapes_teacher, pool=streamed, pool_store=store)
    assert len(reads) == 20 and result.metrics["pool_embeddings"]["status"] == "reused"
    assert result.surrogate.images.shape[-1] == 16


def test_a_large_teachers_pool_is_embedded_with_the_int8_tower_only_where_it_agrees(tmp_path):
    """A random-weight ViT-B-32 (the real architecture, at 32 px) on the CPU: its pool is embedded through onnxruntime,
    INT8 where it agrees with torch on the job's own images and classes, fp32 where it does not; the key names the
    tower, and the metrics say which and why."""
    from bench.teacher_speed import random_teacher
    from core.pipeline import pool_encoder, resolved_spec

    teacher = random_teacher("ViT-B-32", image_size=32)
    spec = resolved_spec(_pool_spec(["a dog", "a cat"]), teacher)
    source = PoolSource.from_pixels(_photos(8), 32)
    chosen = pool_encoder(spec, teacher, source, tmp_path / "towers", min_flops=0.0)
    assert chosen.name == "onnxruntime-int8" and chosen.record["agreement"]["cosine_min"] >= 0.98
    views = pool_views(spec, teacher, source, encoder=chosen)
    assert views.summary["encoder"] == "onnxruntime-int8" and views.summary["encoder_choice"]["precision"] == "int8"
    cosine = F.cosine_similarity(teacher.encode_image(source.at(torch.arange(3), 32)), views.views.embeddings[:3, 0].float())
    assert float(cosine.min()) > 0.98
    # Held to a cosine no INT8 tower reaches (1.0), the fp32 tower embeds the pool instead, under another key.
    strict = pool_encoder(spec, teacher, source, tmp_path / "towers", min_flops=0.0, min_cosine=1.0)
    assert strict.name == "onnxruntime-fp32" and "cosine_min" in str(strict.record["reason"])
    exact = pool_views(spec, teacher, source, encoder=strict)
    assert exact.summary["key"] != views.summary["key"]
    cosine = F.cosine_similarity(teacher.encode_image(source.at(torch.arange(3), 32)), exact.views.embeddings[:3, 0].float())
    assert float(cosine.min()) > 0.999  # fp16 storage of fp32 embeddings
    # A fast teacher (under the threshold) keeps torch.
    assert pool_encoder(spec, teacher, source, tmp_path / "towers", min_flops=1e15).name == "torch"
