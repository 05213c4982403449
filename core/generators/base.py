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

    per_image_buffers: tuple[str, ...] = ()  # buffers of this module with one row per image (sliced by keep)

    def __init__(self, n: int, image_size: int) -> None:
        super().__init__()
        self.n = n
        self.image_size = image_size

    def forward(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def prior_loss(self) -> torch.Tensor:
        """A penalty that keeps the parameters where the generator's prior has mass; 0 without one."""
        return next(self.parameters()).new_zeros(())

    def keep(self, index: torch.Tensor) -> None:
        """Keep only images ``index`` (in that order), e.g. the best of several candidate starts.

        Every parameter is per image (first dimension ``n``) and is sliced in place; a generator
        with per-image buffers slices them too (``per_image_buffers``)."""
        for module in self.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                setattr(module, name, nn.Parameter(param.detach()[index.to(param.device)].clone()))
        for name in self.per_image_buffers:
            buffer = getattr(self, name)
            self.register_buffer(name, buffer[index.to(buffer.device)].clone())
        self.n = len(index)


# Factories take (n, image_size, *, rng: torch.Generator, device, **cfg) and return an ImageGenerator.
GENERATORS: Registry[ImageGenerator] = Registry("generator")


def create_generator(
    name: str, n: int, image_size: int, *, rng: torch.Generator, device: torch.device | str = "cpu", **cfg: object
) -> ImageGenerator:
    return GENERATORS.create(name, n=n, image_size=image_size, rng=rng, device=torch.device(device), **cfg)
