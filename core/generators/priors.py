"""Latent priors: a Gaussian mixture over a decoder's latent codes of unlabelled images.

Why a prior at all (see ``core.generators.decoder``): ``z ~ N(0, I)`` decodes to speckle, because the
aggregate posterior of real images is far from isotropic. The default is a kernel density estimate over
the encoder's posterior means of unlabelled images: one Gaussian component per image's code, with the
codes' covariance scaled by ``KDE_BANDWIDTH**2`` (issue 10: one full-covariance Gaussian's samples decode
to colour soup and a student distilled on them reaches 0.33 on val; the kernel density's reach 0.75).

One piece of code fits every prior: the bundled ``shapes-vae``'s (``bench/train_decoder.py``, over
rendered world images), the default prior of a decoder trained by ``clipforge decoders train``, and any
prior ``clipforge priors build`` fits over a user's folder for a decoder that ships its encoder.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from core.generators.decoder import (
    PRIOR_NAME_PATTERN,
    STANDARD_PRIOR,
    LatentEncoder,
    LatentPrior,
    find_decoder_dir,
    load_encoder_from,
    prior_card_file,
    prior_file,
    writable_prior_dir,
)
from core.generators.image_folder import Cancelled, ImageFolder, as_float, load_image_folder

KDE_BANDWIDTH = 0.3  # a kernel density prior's kernel: the global covariance scaled by this squared
PRIOR_JITTER = 1e-3  # added to the covariance's diagonal; the bundle's smallest eigenvalue measured 0.015
PRIOR_SEED = 777  # k-means seeds and the choice of images when a folder has more than max_images
KMEANS_ITERATIONS = 25
PRIOR_IMAGES = 8192  # codes in a kernel density prior at most: its means are 8 MB in fp16 at 512 dimensions
ENCODE_BATCH = 512


class PriorError(ValueError):
    """A prior that cannot be built as asked; ``code`` is machine-readable."""

    code = "invalid_prior"


class PriorExistsError(PriorError):
    code = "prior_exists"


@dataclass(frozen=True)
class PriorFitConfig:
    """How a prior is fitted over a set of codes."""

    components: int = 0  # 0: a kernel density estimate (one component per code); 1: one Gaussian; else k-means clusters
    bandwidth: float = KDE_BANDWIDTH  # a kernel density's kernel: the codes' covariance scaled by this squared
    max_images: int = PRIOR_IMAGES  # a folder with more images gives a seeded random subset of this many
    seed: int = PRIOR_SEED  # the subset and the k-means seeds
    encode_batch: int = ENCODE_BATCH  # images through the encoder at once


def kmeans(points: torch.Tensor, k: int, *, iterations: int, seed: int) -> torch.Tensor:
    """Cluster index of every row of ``points`` (Lloyd's algorithm from k-means++ seeds)."""
    g = torch.Generator().manual_seed(seed)
    centres = points[torch.randint(len(points), (1,), generator=g)]
    nearest = torch.cdist(points, centres).squeeze(1).square()
    for _ in range(1, k):
        pick = torch.multinomial(nearest / nearest.sum(), 1, generator=g)
        centres = torch.cat([centres, points[pick]])
        nearest = torch.minimum(nearest, torch.cdist(points, points[pick]).squeeze(1).square())
    for _ in range(iterations):
        assign = torch.cdist(points, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).clamp(min=1).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts, centres)
    return torch.cdist(points, centres).argmin(1)


def fit_mixture(
    codes: torch.Tensor, components: int, *, bandwidth: float = KDE_BANDWIDTH, seed: int = PRIOR_SEED
) -> dict[str, torch.Tensor]:
    """A Gaussian mixture with one shared covariance over ``codes`` (N, D).

    components 1: the single full-covariance Gaussian. 1 < components < N: k-means in the global
    Gaussian's whitened space, and the pooled within-cluster covariance. components >= N: a kernel
    density estimate, every code a component with the global covariance scaled by ``bandwidth**2``.
    """
    codes = codes.double()
    mean = codes.mean(0)
    covariance = torch.cov(codes.T)
    jitter = PRIOR_JITTER * torch.eye(codes.shape[1], dtype=torch.float64)
    scale_tril = torch.linalg.cholesky(covariance + jitter)
    if components <= 1:
        means, within = mean[None], scale_tril
    elif components >= len(codes):
        means, within = codes, bandwidth * scale_tril
    else:
        whitened = torch.linalg.solve_triangular(scale_tril, (codes - mean).T, upper=False).T
        assign = kmeans(whitened.float(), components, iterations=KMEANS_ITERATIONS, seed=seed)
        counts = torch.bincount(assign, minlength=components).double()
        means = torch.zeros(components, codes.shape[1], dtype=torch.float64).index_add_(0, assign, codes) / counts.clamp(min=1)[:, None]
        residual = codes - means[assign]
        within = torch.linalg.cholesky(residual.T @ residual / (len(codes) - components) + jitter)
    weights = torch.bincount(assign, minlength=components).double() if 1 < components < len(codes) else torch.ones(len(means))
    return {"means": means.float().contiguous(), "scale_tril": within.float().contiguous(), "weights": (weights / weights.sum()).float()}


@torch.no_grad()
def encode_means(encoder: LatentEncoder, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """(N, D) flattened posterior means of every image in ``batches`` (each (B, 3, S, S) in [0, 1])."""
    device = next(encoder.parameters(), torch.empty(0)).device
    return torch.cat([encoder(batch.to(device))[0].flatten(1).cpu() for batch in batches])


def save_prior(codes: torch.Tensor, path: Path, *, components: int = 0, bandwidth: float = KDE_BANDWIDTH, seed: int = PRIOR_SEED) -> dict:
    """Fit a prior over ``codes`` (N, D) and write it to ``path``; returns what a card records of it.

    components 0: a kernel density estimate (one component per code)."""
    components = components or len(codes)
    tensors = fit_mixture(codes, components, bandwidth=bandwidth, seed=seed)
    if components > 1:
        tensors["means"] = tensors["means"].half()  # fp16 halves a kernel density prior's file; codes are within +-10
    save_file(tensors, str(path))
    eigenvalues = torch.linalg.eigvalsh(torch.cov(codes.T.double()))
    kind = (
        "one full-covariance Gaussian"
        if components <= 1
        else f"kernel density: one Gaussian component per code, the codes' covariance scaled by {bandwidth}**2"
        if components >= len(codes)
        else f"{components}-component mixture (k-means), one shared covariance"
    )
    return {
        "file": path.name,
        "kind": kind,
        "dimensions": codes.shape[1],
        "components": int(tensors["means"].shape[0]),
        "bandwidth": bandwidth if components >= len(codes) > 1 else None,
        "diagonal_jitter": PRIOR_JITTER,
        "covariance_eigenvalues_min_max": [round(float(eigenvalues[0]), 5), round(float(eigenvalues[-1]), 3)],
        "means_dtype": "float16" if components > 1 else "float32",
        "bytes": path.stat().st_size,
    }


def subset_index(count: int, config: PriorFitConfig) -> torch.Tensor:
    """The images a prior is fitted on: all of them, or a seeded random subset of ``max_images`` in folder order."""
    if count <= config.max_images:
        return torch.arange(count)
    return torch.randperm(count, generator=torch.Generator().manual_seed(config.seed))[: config.max_images].sort().values


def fit_folder_prior(encoder: LatentEncoder, images: ImageFolder, path: Path, config: PriorFitConfig) -> dict[str, object]:
    """Encode ``images`` (or the subset ``config`` picks) and write their prior to ``path``; returns its card."""
    index = subset_index(len(images), config)
    batches = (as_float(images.pixels[chunk]) for chunk in index.split(config.encode_batch))
    codes = encode_means(encoder, batches)
    summary = save_prior(codes, path, components=config.components, bandwidth=config.bandwidth, seed=config.seed)
    return {**summary, "images": {**images.card(), "used": len(index), "subset_seed": config.seed if len(index) < len(images) else None}}


def prior_of_images(encoder: LatentEncoder, pixels: torch.Tensor, config: PriorFitConfig = PriorFitConfig()) -> LatentPrior:
    """A prior over the encoder's codes of ``pixels`` (N, 3, S, S) in [0, 1], fitted in memory (a job's image pool):
    the same fit as a folder's, resized to the encoder's input size first."""
    size = encoder.config.image_size
    chosen = pixels[subset_index(len(pixels), config)]
    if chosen.shape[-1] != size:
        chosen = F.interpolate(chosen, size=(size, size), mode="bilinear", align_corners=False, antialias=chosen.shape[-1] > size)
    codes = encode_means(encoder, chosen.clamp(0.0, 1.0).split(config.encode_batch))
    components = config.components or len(codes)
    return LatentPrior(**fit_mixture(codes, components, bandwidth=config.bandwidth, seed=config.seed))


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


def build_prior(
    decoder: str,
    images_folder: str | Path,
    name: str,
    *,
    cache_dir: str | Path | None = None,
    config: PriorFitConfig = PriorFitConfig(),
    force: bool = False,
    on_image: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, object]:
    """Fit prior ``name`` of ``decoder`` over the images under ``images_folder`` and store it where jobs find it
    (``writable_prior_dir``: beside the decoder, or ``<cache>/decoders/<decoder>/`` for a bundled one), with a card.

    A later job uses it as ``"synthesis": {"decoder": decoder, "prior": name}``. The prior file appears whole or not
    at all (written under a temporary name, then renamed). Returns the card.
    """
    if not PRIOR_NAME_PATTERN.match(name) or name == STANDARD_PRIOR:
        raise PriorError(f"a prior's name is lower-case letters, digits, '-' and '_' (at most 41), not 'standard': {name!r}")
    folder = find_decoder_dir(decoder, cache_dir)
    encoder = load_encoder_from(folder)  # decoder_has_no_encoder before any image is read
    target_dir = writable_prior_dir(decoder, cache_dir)
    target = target_dir / prior_file(name)
    if target.exists() and not force:
        raise PriorExistsError(f"decoder {decoder!r} already has a prior {name!r} ({target}); pass --force to replace it")
    images = load_image_folder(images_folder, encoder.config.image_size, on_image=on_image, should_cancel=should_cancel)
    if should_cancel is not None and should_cancel():
        raise Cancelled("cancelled before fitting")
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_dir, prefix=".prior-") as staging:
        staged = Path(staging) / target.name
        card = {
            "prior": name,
            "decoder": decoder,
            "decoder_path": str(folder.resolve()),
            **fit_folder_prior(encoder, images, staged, config),
            "fit": {k: v for k, v in asdict(config).items() if k != "encode_batch"},
        }
        card["file"], card["path"] = target.name, str(target.resolve())
        write_json(Path(staging) / prior_card_file(name), card)
        staged.chmod(0o644)  # safetensors writes 0600; a worker running as another user must read the prior
        # The card first, the prior last: a job looks only for the prior, so it never sees half a pair.
        os.replace(Path(staging) / prior_card_file(name), target_dir / prior_card_file(name))
        os.replace(staged, target)
    return card
