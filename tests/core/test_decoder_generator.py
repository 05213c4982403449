"""The `decoder` generator: the ImageGenerator contract, the bundled shapes-vae decoder, and that z is easy to optimise."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from bench.world import render_batch
from core.generators.base import GENERATORS, ImageGenerator, create_generator
from core.generators.decoder import (
    PRIOR_FILE,
    DecoderConfig,
    DecoderError,
    DecoderGenerator,
    LatentDecoder,
    LatentEncoder,
    LatentPrior,
    decoder_dir,
    load_decoder,
    load_decoder_from,
    load_latent_prior,
    load_latent_prior_from,
)

IMAGE_SIZE = 32
N_IMAGES = 4
FIT_IMAGES = 4
FIT_STEPS = 100
FIT_LR = 0.05
# Measured on the bundled decoder (bench/results/experiments.md, 2026-11-28): fitting z from
# N(0, I) to these four rendered images reaches MSE 0.0028 (rng seed 2; 0.0030 with seed 3) in
# 100 Adam steps; twice that is the bound. A randomly initialised decoder only reaches 0.031.
RECONSTRUCTION_MSE_BOUND = 0.006


def generator(seed: int, *, n: int = N_IMAGES, image_size: int = IMAGE_SIZE, **cfg: object) -> ImageGenerator:
    return create_generator("decoder", n, image_size, rng=torch.Generator().manual_seed(seed), device="cpu", **cfg)


def trainable(gen: ImageGenerator) -> list[torch.nn.Parameter]:
    return [p for p in gen.parameters() if p.requires_grad]  # what the synthesis optimiser will take


def mean_edge(images: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring pixels: high for speckle, low for smooth scenes."""
    return float((images.diff(dim=-1).abs().mean() + images.diff(dim=-2).abs().mean()) / 2)


def test_decoder_is_registered() -> None:
    assert "decoder" in GENERATORS


@pytest.mark.parametrize("image_size", [IMAGE_SIZE, 48, 24])
def test_forward_shape_and_range(image_size: int) -> None:
    images = generator(0, image_size=image_size)()
    assert images.shape == (N_IMAGES, 3, image_size, image_size)
    assert images.dtype == torch.float32
    assert float(images.detach().min()) >= 0.0 and float(images.detach().max()) <= 1.0


def test_only_the_latents_are_optimisable() -> None:
    gen = generator(0)
    assert [p is gen.z for p in gen.parameters()] == [True]
    assert trainable(gen)[0].shape == (N_IMAGES, *load_decoder().config.latent_shape)
    gen().square().mean().backward()
    assert gen.z.grad is not None and gen.z.grad.abs().sum() > 0
    decoder_tensors = list(gen.decoder.state_dict().values())
    assert decoder_tensors and all(not t.requires_grad and t.grad is None for t in decoder_tensors)


def test_decoder_stays_in_eval_mode() -> None:
    gen = generator(0).train()
    assert gen.training and not gen.decoder.training


def test_same_seed_same_images_other_seed_other_images() -> None:
    assert torch.equal(generator(3)(), generator(3)())
    assert not torch.allclose(generator(3)(), generator(4)())


def test_init_scale_scales_the_latents() -> None:
    assert torch.allclose(generator(0, init_scale=0.5).z, 0.5 * generator(0).z)
    flat = generator(0, init_scale=0.0, prior="gaussian")()
    assert torch.allclose(flat, flat[:1].expand_as(flat))  # one component and u = 0: one image, n times
    centres = generator(0, init_scale=0.0)  # the kernel density: each image is its component's code exactly
    assert torch.allclose(centres.latents().flatten(1), load_latent_prior().means[centres.component])
    with pytest.raises(ValueError):
        generator(0, init_scale=-1.0)


def test_adam_on_z_reduces_the_distance_to_a_target() -> None:
    target, _ = render_batch(1, seed=7)
    gen = generator(1, n=1)
    optimizer = torch.optim.Adam(trainable(gen), lr=FIT_LR)
    before = F.mse_loss(gen(), target).item()
    for _ in range(10):
        loss = F.mse_loss(gen(), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert F.mse_loss(gen(), target).item() < 0.8 * before


def test_bundled_decoder_reconstructs_rendered_images() -> None:
    """Fit z from a random start to a few world images: the decoder can draw them (no encoder needed)."""
    targets, _ = render_batch(FIT_IMAGES, seed=11, distractor_prob=0.8)
    gen = generator(2, n=len(targets), prior="gaussian")  # the bound was measured in this prior's whitened codes
    optimizer = torch.optim.Adam(trainable(gen), lr=FIT_LR)
    for _ in range(FIT_STEPS):
        loss = F.mse_loss(gen(), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert F.mse_loss(gen(), targets).item() < RECONSTRUCTION_MSE_BOUND


def test_load_decoder_is_frozen_float32_and_returns_independent_copies() -> None:
    first, second = load_decoder(), load_decoder()
    assert first is not second and not first.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in first.parameters())
    with torch.no_grad():
        next(first.parameters()).add_(1.0)
    assert not torch.equal(next(first.parameters()), next(second.parameters()))
    assert torch.equal(next(second.parameters()), next(load_decoder().parameters()))


def test_unknown_decoder_is_a_clear_error() -> None:
    with pytest.raises(DecoderError, match="no-such-decoder"):
        load_decoder("no-such-decoder")


def test_architecture_round_trip_without_the_bundle() -> None:
    config = DecoderConfig(widths=(16, 32, 64), latent_channels=2)
    assert DecoderConfig.from_dict(config.to_dict()) == config
    images, _ = render_batch(2, seed=0)
    mean, logvar = LatentEncoder(config)(images)
    assert mean.shape == logvar.shape == (2, *config.latent_shape)
    gen = DecoderGenerator(2, IMAGE_SIZE, LatentDecoder(config), rng=torch.Generator().manual_seed(0))
    assert gen().shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with pytest.raises(ValueError):
        DecoderConfig(image_size=32, latent_size=4, widths=(32, 64))


def test_fitted_prior_decodes_mean_plus_cholesky_times_codes() -> None:
    gen = generator(5, prior="fitted")
    prior = load_latent_prior()
    expected = (prior.means[gen.component] + gen.z.flatten(1) @ prior.scale_tril.T).view_as(gen.z)
    assert torch.allclose(gen.latents(), expected)
    assert torch.allclose(gen(), gen.decoder(expected).clamp(0, 1))
    assert torch.equal(generator(5, prior="standard").latents(), generator(5, prior="standard").z)


def test_fitted_prior_is_a_valid_gaussian_mixture_factor() -> None:
    prior = load_latent_prior()
    assert prior.means.shape == (prior.components, math.prod(load_decoder().config.latent_shape))
    assert torch.equal(prior.scale_tril, prior.scale_tril.tril())
    assert bool((prior.scale_tril.diagonal() > 0).all())
    assert prior.weights.shape == (prior.components,) and math.isclose(float(prior.weights.sum()), 1.0, rel_tol=1e-5)


def test_a_mixture_prior_draws_each_image_a_component_by_weight_and_keeps_it(tmp_path) -> None:
    dimensions = math.prod(load_decoder().config.latent_shape)
    means = torch.stack([torch.full((dimensions,), -2.0), torch.full((dimensions,), 3.0)])
    save_file({"means": means, "scale_tril": 0.1 * torch.eye(dimensions), "weights": torch.tensor([1.0, 3.0])}, str(tmp_path / PRIOR_FILE))
    prior = load_latent_prior_from(tmp_path)
    assert prior.components == 2 and torch.allclose(prior.weights, torch.tensor([0.25, 0.75]))
    gen = DecoderGenerator(400, IMAGE_SIZE, load_decoder(), rng=torch.Generator().manual_seed(0), prior=prior)
    share = float((gen.component == 1).float().mean())
    assert 0.68 < share < 0.82
    centred = gen.latents().flatten(1).mean(1)
    assert torch.allclose(centred, means[gen.component].mean(1), atol=0.05)
    # The component is fixed at initialisation: optimising moves the whitened codes only.
    assert [name for name, _ in gen.named_parameters()] == ["z"]
    gen.keep(torch.tensor([3, 1]))
    assert gen.n == 2 and gen.z.shape[0] == 2 and gen.component.shape == (2,) and gen().shape[0] == 2


def test_the_prior_term_is_half_the_mean_square_of_the_whitened_codes() -> None:
    gen = generator(0, n=64, prior="fitted")
    assert torch.isclose(gen.prior_loss(), 0.5 * gen.z.square().mean())
    assert 0.4 < gen.prior_loss().item() < 0.6  # about 0.5 at a prior sample
    assert float(generator(0, prior="standard").prior_loss()) == 0.0


def test_samples_from_the_fitted_prior_are_smoother_than_from_a_standard_normal() -> None:
    """Measured 0.054 against 0.093 (three seeds, 64 images): N(0, I) decodes to speckle."""
    with torch.no_grad():
        fitted = mean_edge(generator(0, n=64, prior="fitted")())
        standard = mean_edge(generator(0, n=64, prior="standard")())
    assert fitted < 0.75 * standard


def test_prior_errors_are_clear(tmp_path) -> None:
    with pytest.raises(ValueError, match="prior"):
        generator(0, prior="../elsewhere")
    with pytest.raises(DecoderError, match="latent_prior-uniform"):
        generator(0, prior="uniform")
    with pytest.raises(DecoderError, match="fit-prior"):
        load_latent_prior_from(tmp_path)
    wrong = LatentPrior(torch.zeros(3), torch.eye(3))
    with pytest.raises(DecoderError, match="dimensions"):
        DecoderGenerator(1, IMAGE_SIZE, load_decoder(), rng=torch.Generator().manual_seed(0), prior=wrong)


def test_loading_a_decoder_leaves_the_global_rng_alone() -> None:
    """A job seeds torch, then builds its generator: a first (uncached) load must not shift later draws."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load_decoder_from(decoder_dir("shapes-vae"))
    assert torch.equal(torch.rand(3), expected)
