"""Image generators for inversion, behind the ``ImageGenerator`` contract and the ``GENERATORS`` registry."""

from core.generators import basic, decoder, pool_images  # noqa: F401  (register fourier, pixel, decoder and pool)
from core.generators.base import GENERATORS, ImageGenerator, create_generator

__all__ = ["GENERATORS", "ImageGenerator", "create_generator"]
