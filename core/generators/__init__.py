"""Image generators for inversion, behind the ``ImageGenerator`` contract and the ``GENERATORS`` registry."""

from core.generators import basic, decoder  # noqa: F401  (register fourier, pixel and decoder)
from core.generators.base import GENERATORS, ImageGenerator, create_generator

__all__ = ["GENERATORS", "ImageGenerator", "create_generator"]
