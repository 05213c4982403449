"""Decoding example images into teacher-ready pixel tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def to_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """RGB pixels in [0, 1], (3, size, size): the shorter side resized to ``size``, then centre-cropped."""
    image = ImageOps.exif_transpose(image).convert("RGB")
    image = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def load_folder(folder: str | Path, size: int) -> torch.Tensor:
    """Every image file in ``folder`` (sorted by name) as (M, 3, size, size) pixels."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no image files in {folder}")
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(to_pixels(image, size))
    return torch.stack(images)
