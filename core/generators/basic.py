"""Weight-free image parameterisations: decorrelated-colour Fourier and raw pixels."""

from __future__ import annotations

import torch
from torch import nn

from core.generators.base import GENERATORS, ImageGenerator

# Square root of the colour correlation of natural images (Lucid / feature-visualisation work):
# optimising in this decorrelated space keeps colour gradients balanced.
COLOUR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOUR_CORRELATION_SQRT = COLOUR_CORRELATION_SQRT / COLOUR_CORRELATION_SQRT.norm(dim=0).max()
FOURIER_INIT_STD = 0.01  # spectrum init scale (Lucid's default)
FOURIER_DECAY = 1.0  # amplitude falls as 1/f^decay: a natural-image spectrum
FOURIER_GAIN = 4.0  # logit gain after normalising the spectrum scale (Lucid scales by a similar constant)
PIXEL_INIT_STD = 0.1  # logit init scale around mid-grey


class FourierGenerator(ImageGenerator):
    """Images as 1/f-scaled Fourier coefficients in a decorrelated colour space, through a sigmoid."""

    def __init__(self, n: int, image_size: int, *, rng: torch.Generator, device: torch.device, decay: float = FOURIER_DECAY) -> None:
        super().__init__(n, image_size)
        fy = torch.fft.fftfreq(image_size)[:, None]
        fx = torch.fft.rfftfreq(image_size)[None, :]
        frequency = torch.sqrt(fx * fx + fy * fy).clamp(min=1.0 / image_size)
        self.register_buffer("spectrum_scale", (1.0 / frequency**decay).to(device))
        self.register_buffer("colour", COLOUR_CORRELATION_SQRT.to(device))
        shape = (n, 3, image_size, image_size // 2 + 1, 2)
        self.spectrum = nn.Parameter((FOURIER_INIT_STD * torch.randn(shape, generator=rng)).to(device))

    def forward(self) -> torch.Tensor:
        coefficients = torch.view_as_complex(self.spectrum) * self.spectrum_scale
        # The scale normalisation keeps the pixel variance independent of the image size.
        decorrelated = torch.fft.irfft2(coefficients, s=(self.image_size, self.image_size), norm="ortho")
        decorrelated = decorrelated / self.spectrum_scale.mean() * FOURIER_GAIN
        rgb = torch.einsum("nchw,dc->ndhw", decorrelated, self.colour)
        return torch.sigmoid(rgb)


class PixelGenerator(ImageGenerator):
    """Images as free per-pixel logits (the weakest prior: DeepInversion's parameterisation)."""

    def __init__(self, n: int, image_size: int, *, rng: torch.Generator, device: torch.device) -> None:
        super().__init__(n, image_size)
        self.logits = nn.Parameter((PIXEL_INIT_STD * torch.randn(n, 3, image_size, image_size, generator=rng)).to(device))

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)


@GENERATORS.register("fourier")
def create_fourier(n: int, image_size: int, *, rng: torch.Generator, device: torch.device, decay: float = FOURIER_DECAY) -> ImageGenerator:
    return FourierGenerator(n, image_size, rng=rng, device=device, decay=decay)


@GENERATORS.register("pixel")
def create_pixel(n: int, image_size: int, *, rng: torch.Generator, device: torch.device) -> ImageGenerator:
    return PixelGenerator(n, image_size, rng=rng, device=device)
