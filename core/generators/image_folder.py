"""A folder of unlabelled images as training data for a decoder or a latent prior.

Any folder a user has: searched recursively, every ``.png``, ``.jpg``, ``.jpeg``, ``.webp`` and ``.bmp``
file, each converted to RGB and resized to one square size (``core.images.to_pixels``: the shorter side
resized, then centre-cropped, as example images are). Every file is decoded before anything trains, so
that a broken file fails the command at once, by name, instead of an hour into training.

Pixels are kept as uint8 (a quarter of float32's memory: 60,000 images of 32 px are 184 MB) and
converted batch by batch.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from core.images import to_pixels

TRAINING_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImageFolderError(ValueError):
    """A folder that cannot serve as training images; ``code`` is machine-readable."""

    code = "invalid_images"


class NoImagesError(ImageFolderError):
    code = "no_images"


class InvalidImageError(ImageFolderError):
    code = "invalid_image"


class Cancelled(Exception):
    """``should_cancel`` answered True while reading images, training or fitting; nothing was written."""

    code = "cancelled"


@dataclass(frozen=True)
class ImageFolder:
    """The decoded images of a folder, and what identifies them for a card."""

    folder: Path  # absolute
    files: tuple[str, ...]  # paths relative to ``folder``, POSIX separators, sorted
    pixels: torch.Tensor  # (N, 3, S, S) uint8, in the order of ``files``
    files_sha256: str  # of the sorted relative paths, one a line: which files
    content_sha256: str  # of every file's path and bytes in that order: which images, byte for byte

    def __len__(self) -> int:
        return len(self.files)

    def card(self) -> dict[str, object]:
        return {
            "folder": str(self.folder),
            "count": len(self.files),
            "files_sha256": self.files_sha256,
            "content_sha256": self.content_sha256,
            "image_size": int(self.pixels.shape[-1]),
            "preprocessing": "RGB; the shorter side resized (bicubic), then centre-cropped to a square",
        }


def image_files(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursive), sorted by relative path; raises ``no_images`` when none."""
    root = Path(folder)
    if not root.is_dir():
        raise NoImagesError(f"{root} is not a folder")
    paths = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in TRAINING_IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not paths:
        raise NoImagesError(f"no image files ({', '.join(TRAINING_IMAGE_SUFFIXES)}) under {root}")
    return paths


def load_image_folder(
    folder: str | Path, size: int, *, on_image: Callable[[int, int], None] | None = None, should_cancel: Callable[[], bool] | None = None
) -> ImageFolder:
    """Decode every image under ``folder`` to (3, size, size) uint8. ``on_image(done, total)`` after each file.

    Raises ``no_images`` for a folder without image files and ``invalid_image``, naming the file, for one that
    Pillow cannot decode. ``should_cancel`` is asked before each file; True raises ``Cancelled``.
    """
    root = Path(folder).resolve()
    paths = image_files(root)
    relative = [p.relative_to(root).as_posix() for p in paths]
    content = hashlib.sha256()
    pixels = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for index, (path, name) in enumerate(zip(paths, relative, strict=True)):
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"cancelled after reading {index} of {len(paths)} images")
        data = path.read_bytes()
        content.update(f"{name}\n{len(data)}\n".encode())
        content.update(data)
        try:
            with Image.open(io.BytesIO(data)) as image:
                pixels[index] = (to_pixels(image, size) * 255).round().to(torch.uint8)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InvalidImageError(f"cannot read image {path}: {exc}") from exc
        if on_image is not None:
            on_image(index + 1, len(paths))
    files_sha256 = hashlib.sha256("".join(f"{name}\n" for name in relative).encode()).hexdigest()
    return ImageFolder(root, tuple(relative), pixels, files_sha256, content.hexdigest())


def as_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1]."""
    return pixels.float().div_(255.0)


class ShuffledBatches:
    """Batch ``step`` of a seeded run over ``pixels``: epoch after epoch of seeded permutations, without replacement
    within an epoch. A pure function of (seed, step), like the shapes world's rendered batches, so a run repeats."""

    def __init__(self, pixels: torch.Tensor, batch_size: int, seed: int) -> None:
        if len(pixels) == 0:
            raise NoImagesError("no images to draw batches from")
        self.pixels, self.batch_size, self.seed = pixels, batch_size, seed
        self._permutations: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            # Two epochs at most: a batch may straddle the boundary between them.
            self._permutations = {e: p for e, p in self._permutations.items() if e == epoch - 1}
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._permutations[epoch] = torch.randperm(len(self.pixels), generator=generator)
        return self._permutations[epoch]

    def __call__(self, step: int) -> torch.Tensor:
        count = len(self.pixels)
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        index = torch.stack([self._permutation(p // count)[p % count] for p in positions])
        return as_float(self.pixels[index])
