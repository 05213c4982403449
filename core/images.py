"""Decoding example images into teacher-ready pixel tensors."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from clipforge_runtime import prepare_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def to_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """RGB pixels in [0, 1], (3, size, size): the shorter side resized to ``size``, then centre-cropped; the runtime's
    preparation (clipforge_runtime.prepare_image), so a job's examples, evaluations and predictions see images alike."""
    return torch.from_numpy(prepare_image(image, size))


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
