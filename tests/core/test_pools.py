"""A job with the user's unlabelled images (core.pools): a seeded held-out split, pool images in the distillation
batches (labelled by the teacher), and the student's agreement with the teacher on the held-out ones in the metrics."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from bench.tasks import get_task
from core.generators.decoder import decoder_generator, find_decoder_dir, load_encoder_from
from core.generators.priors import prior_of_images
from core.pipeline import customize, prepare
from core.pools import MAX_HELD_OUT, MIN_PRIOR_IMAGES, split_pool
from core.spec import CustomizeSpec, InvalidSharesError, resolve
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
    images = torch.arange(40, dtype=torch.float32).view(40, 1, 1, 1).expand(40, 3, 2, 2)
    first, again, other = split_pool(images, 3), split_pool(images, 3), split_pool(images, 4)
    assert torch.equal(first.held_out, again.held_out) and not torch.equal(first.held_out, other.held_out)
    assert (len(first.train), len(first.held_out)) == (36, 4)
    seen = set(first.train[:, 0, 0, 0].tolist()) | set(first.held_out[:, 0, 0, 0].tolist())
    assert seen == set(range(40))
    assert len(split_pool(torch.zeros(10_000, 3, 1, 1), 0).held_out) == MAX_HELD_OUT
    with pytest.raises(ValueError, match="at least 2 images"):
        split_pool(torch.zeros(1, 3, 2, 2), 0)


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
    assert fitted.metrics["generator"]["pool_prior"] == {"used": True, "images": len(split_pool(pool, 0).train), "dimensions": 512}
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
    train = split_pool(pool, spec.seed).train
    assert result.metrics["generator"] == {"name": "pool", "images": len(train)}
    # No inversion steps: every surrogate image is one of the pool's distilled-on images, the teacher's pick per class.
    distances = torch.cdist(result.surrogate.images.flatten(1), train.flatten(1)).min(1).values
    assert float(distances.max()) < 0.05
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
