"""The user's own images as the image prior: a generator whose starts are images of a job's pool (core.pools).

For a teacher without a decoder (any open_clip model before `clipforge decoders pull`), a pool of unlabelled images of
the user's domain is a better prior than any noise: its images are drawn at random (prior samples), the teacher keeps
the most class-like of several per surrogate image (``init_candidates``), and inversion steps, if any, move their pixels
(free logits, as the pixel generator's) toward the class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.generators.base import GENERATORS, ImageGenerator

LOGIT_EPSILON = 1e-3  # pixels are clamped into [eps, 1 - eps] before their logit: 0 and 1 have none


class PoolImageGenerator(ImageGenerator):
    """``n`` images drawn from ``images`` (with replacement, from the rng) as free per-pixel logits."""

    def __init__(self, n: int, image_size: int, images: torch.Tensor, *, rng: torch.Generator, device: torch.device) -> None:
        super().__init__(n, image_size)
        if images.dim() != 4 or images.shape[1] != 3 or len(images) == 0:
            raise ValueError(f"the pool generator draws from (N, 3, S, S) images, got shape {tuple(images.shape)}")
        chosen = images[torch.randint(len(images), (n,), generator=rng)]
        if chosen.dtype == torch.uint8:  # a pool kept as bytes (core.pools)
            chosen = chosen.float() / 255.0
        if chosen.shape[-1] != image_size or chosen.shape[-2] != image_size:  # kept at the student's size
            chosen = F.interpolate(chosen, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        self.logits = nn.Parameter(torch.logit(chosen.clamp(LOGIT_EPSILON, 1 - LOGIT_EPSILON)).to(device))

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)


@GENERATORS.register("pool")
def create_pool(n: int, image_size: int, *, rng: torch.Generator, device: torch.device, images: torch.Tensor) -> ImageGenerator:
    return PoolImageGenerator(n, image_size, images, rng=rng, device=device)
