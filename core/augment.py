"""Differentiable random augmentation, as in CLIP-guided image synthesis.

Each image yields several "cutouts": random resized crops with flips, small rotations and
pixel noise, resampled to the teacher's input size with one batched ``grid_sample``. All
randomness comes from the ``torch.Generator`` passed in, so a seed fixes every view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    min_scale: float = 0.6  # smallest crop side as a fraction of the image side
    max_scale: float = 1.0  # largest crop side
    max_rotation_deg: float = 10.0  # uniform in [-max, max]
    flip_prob: float = 0.5  # horizontal flips
    noise_std: float = 0.02  # Gaussian pixel noise added after resampling
    max_shift: float = 0.1  # extra translation, as a fraction of the image side


VIEW_PARAMS = 5  # scale, angle (radians), flip (+-1), shift x, shift y: one view's geometry (``view_params``)


def view_params(n: int, rng: torch.Generator, config: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    """(n, VIEW_PARAMS) random view geometries: a crop's scale, rotation, flip and shift, drawn on ``rng``."""
    scale = config.min_scale + (config.max_scale - config.min_scale) * torch.rand(n, generator=rng)
    angle = math.radians(config.max_rotation_deg) * (2 * torch.rand(n, generator=rng) - 1)
    flip = torch.where(torch.rand(n, generator=rng) < config.flip_prob, -1.0, 1.0)
    # The crop centre may move as far as the crop stays (mostly) inside the image.
    room = (1 - scale).unsqueeze(1) + config.max_shift
    shift = room * (2 * torch.rand(n, 2, generator=rng) - 1)
    return torch.cat([scale[:, None], angle[:, None], flip[:, None], shift], dim=1)


def apply_views(images: torch.Tensor, params: torch.Tensor, out_size: int) -> torch.Tensor:
    """Each image resampled through its view geometry (one row of ``params`` per image), (B, 3, out_size, out_size):
    the same params give the same view, so a view's teacher embedding can be computed once and kept (core.bank)."""
    params = params.to(images.device, images.dtype)
    scale, angle, flip, shift = params[:, 0], params[:, 1], params[:, 2], params[:, 3:5]
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], dim=1), torch.stack([sin * flip, cos, shift[:, 1]], dim=1)],
        dim=1,
    )
    grid = F.affine_grid(theta, [len(images), 3, out_size, out_size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_views(
    images: torch.Tensor,
    views: int,
    out_size: int,
    rng: torch.Generator,
    config: AugmentConfig = AugmentConfig(),
) -> torch.Tensor:
    """``views`` augmented copies of every image, (views * B, 3, out_size, out_size), view-major.

    Differentiable in ``images``. The random draws happen on the CPU generator and are moved
    to the images' device, so results do not depend on the device's RNG.
    """
    n = images.shape[0] * views
    params = view_params(n, rng, config)
    noise = config.noise_std * torch.randn(n, 3, out_size, out_size, generator=rng)
    out = apply_views(images.repeat(views, 1, 1, 1), params, out_size)
    return (out + noise.to(out.device, out.dtype)).clamp(0.0, 1.0)
