"""The generator contract: an image parameterisation whose parameters inversion optimises."""

from __future__ import annotations

import torch
from torch import nn

from core.registry import Registry


class ImageGenerator(nn.Module):
    """Holds the optimisable parameters of ``n`` images and renders them.

    Contract (every generator keeps it; the losses rely on nothing else):
    - ``forward()`` returns RGB images in [0, 1], shape (n, 3, image_size, image_size),
      differentiable with respect to ``parameters()``;
    - ``parameters()`` are exactly what the synthesis optimiser updates (a frozen pretrained
      decoder's weights are buffers or have ``requires_grad=False``);
    - initialisation draws only from the ``torch.Generator`` it is given, so a seed fixes it;
    - it never writes files and never picks a device by itself.
    """

    def __init__(self, n: int, image_size: int) -> None:
        super().__init__()
        self.n = n
        self.image_size = image_size

    def forward(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


# Factories take (n, image_size, *, rng: torch.Generator, device, **cfg) and return an ImageGenerator.
GENERATORS: Registry[ImageGenerator] = Registry("generator")


def create_generator(
    name: str, n: int, image_size: int, *, rng: torch.Generator, device: torch.device | str = "cpu", **cfg: object
) -> ImageGenerator:
    return GENERATORS.create(name, n=n, image_size=image_size, rng=rng, device=torch.device(device), **cfg)
