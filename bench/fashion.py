"""The fashion world: Zalando's Fashion-MNIST photos (MIT licence), from Debian's package `dataset-fashion-mnist`.

60,000 train and 10,000 test photos, 28x28 grey, ten classes. The four IDX files are found, in order:

1. in the folder that ``$CLIPFORGE_FASHION_DIR`` (or ``FashionSource.data_dir``) names; nothing else is searched then;
2. where the package installs them, when it is installed (``dpkg -L dataset-fashion-mnist``);
3. in ``<cache>/datasets/fashion-mnist`` (``core.teachers.sources.default_cache_dir()``), where step 4 leaves them;
4. fetched with ``apt-get download dataset-fashion-mnist`` and unpacked with ``dpkg-deb -x`` (no root
   install; ``$CLIPFORGE_FASHION_DOWNLOAD=0`` turns this off).

Anywhere else, :class:`FashionDataUnavailable` (``code`` ``dataset_unavailable``) names the package.

Splits: Fashion-MNIST's test photos are ``test`` (for final figures only). Its train photos are divided once,
per class and with a fixed seed, into ``val`` (1/12 of each class: 500 photos), ``examples`` (20 per class, for
image prompts) and ``train`` (the rest: 5,480 per class), so that no photo is in two splits.
"""

from __future__ import annotations

import functools
import gzip
import os
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

PACKAGE = "dataset-fashion-mnist"
PACKAGE_DATA_DIR = Path("usr/share/datasets/fashion-mnist")  # where the package puts the files, below its root
CACHE_SUBDIR = Path("datasets/fashion-mnist")  # below the clipforge cache directory
DATA_DIR_ENV = "CLIPFORGE_FASHION_DIR"
DOWNLOAD_ENV = "CLIPFORGE_FASHION_DOWNLOAD"
NATIVE_SIZE = 28

# Fashion-MNIST's labels 0-9, named as a user types them.
FASHION_CLASSES: tuple[str, ...] = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)

IDX_IMAGES_MAGIC = 2051  # big-endian int32: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # big-endian int32: unsigned bytes, 1 dimension
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

VAL_SHARE = 12  # one photo of each train class in 12 is held out as val (500 of 6,000)
EXAMPLES_PER_CLASS = 20  # held out of train for image prompts (fewer when a class is tiny, as in tests)
HOLDOUT_SEED = zlib.crc32(b"clipforge/fashion-mnist/holdout")
SPLITS = ("train", "val", "test", "examples")


class FashionDataError(RuntimeError):
    """Base class of fashion-world data errors; ``code`` is machine-readable and ``package`` names the source."""

    code = "dataset_error"
    package = PACKAGE


class FashionDataUnavailable(FashionDataError):
    code = "dataset_unavailable"


class FashionDataInvalid(FashionDataError):
    code = "dataset_invalid"


CommandRunner = Callable[[Sequence[str], Path], subprocess.CompletedProcess]


def run_command(command: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    """Runs a system command (dpkg, apt-get, dpkg-deb); a missing program reads as a failed command."""
    try:
        return subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    except (FileNotFoundError, PermissionError) as error:
        return subprocess.CompletedProcess(list(command), 127, "", str(error))


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() not in ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class FashionSource:
    """Where to look for the IDX files, and what may be run to get them."""

    data_dir: Path | None = None  # a folder with the four IDX files; when set, nothing else is searched
    cache_dir: Path | None = None  # clipforge's cache directory; None: core.teachers.sources.default_cache_dir()
    system: bool = True  # look where the installed Debian package put them (dpkg -L)
    download: bool = True  # else fetch the package file (apt-get download) and unpack it into the cache
    run: CommandRunner = field(default=run_command, compare=False)  # runs dpkg, apt-get, dpkg-deb; tests replace it

    @classmethod
    def from_environment(cls) -> FashionSource:
        """The default: ``$CLIPFORGE_FASHION_DIR`` if set; ``$CLIPFORGE_FASHION_DOWNLOAD=0`` forbids apt-get."""
        data_dir = os.environ.get(DATA_DIR_ENV)
        return cls(data_dir=Path(data_dir) if data_dir else None, download=_env_flag(DOWNLOAD_ENV, True))

    def cache_folder(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir / CACHE_SUBDIR
        from core.teachers.sources import default_cache_dir  # imports open_clip: only when needed

        return default_cache_dir() / CACHE_SUBDIR


def _idx_path(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def has_idx_files(folder: Path) -> bool:
    return all(_idx_path(folder, stem) is not None for stem in IDX_FILES.values())


def _installed_dirs(source: FashionSource) -> list[Path]:
    """Folders that the installed package lists and that hold the IDX files (none when it is not installed)."""
    listing = source.run(["dpkg", "-L", PACKAGE], Path.cwd())
    if listing.returncode != 0:
        return []
    folders = {Path(line.strip()).parent for line in listing.stdout.splitlines() if "idx" in line and line.strip()}
    return sorted(f for f in folders if has_idx_files(f))


def _fetch_package(source: FashionSource, target: Path) -> list[str]:
    """Downloads the package file and unpacks its IDX files into ``target``; the failures met, empty on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fashion-", dir=target.parent) as scratch:
        work = Path(scratch)
        fetched = source.run(["apt-get", "download", PACKAGE], work)
        debs = sorted(work.glob(f"{PACKAGE}_*.deb"))
        if fetched.returncode != 0 or not debs:
            return [f"`apt-get download {PACKAGE}` failed: {(fetched.stderr or fetched.stdout).strip()[-300:] or 'no package file'}"]
        root = work / "root"
        unpacked = source.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], work)
        data = root / PACKAGE_DATA_DIR
        if unpacked.returncode != 0 or not has_idx_files(data):
            return [f"`dpkg-deb -x {debs[-1].name}` did not give the IDX files: {unpacked.stderr.strip()[-300:]}"]
        staged = work / "staged"
        staged.mkdir()
        for stem in IDX_FILES.values():
            found = _idx_path(data, stem)
            assert found is not None
            shutil.copy2(found, staged / found.name)
        # A complete folder appears at once: a concurrent reader never sees half of it.
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return []


def locate_fashion(source: FashionSource | None = None) -> Path:
    """The folder that holds the four IDX files, fetching them into the cache if allowed (see the module doc)."""
    source = source or FashionSource.from_environment()
    if source.data_dir is not None:
        if has_idx_files(source.data_dir):
            return source.data_dir
        raise FashionDataUnavailable(
            f"{source.data_dir} ({DATA_DIR_ENV}) lacks the Fashion-MNIST IDX files {', '.join(IDX_FILES.values())} (.gz or not)"
        )
    if source.system:
        installed = _installed_dirs(source)
        if installed:
            return installed[0]
    cached = source.cache_folder()
    if has_idx_files(cached):
        return cached
    problems = [f"the Debian package {PACKAGE} is not installed", f"{cached} holds no copy"]
    if source.download:
        failures = _fetch_package(source, cached)
        if not failures:
            return cached
        problems += failures
    else:
        problems.append(f"fetching is off ({DOWNLOAD_ENV}=0)")
    raise FashionDataUnavailable(
        f"Fashion-MNIST not found ({'; '.join(problems)}). Install the Debian package: `apt-get install {PACKAGE}` "
        f"(or `apt-get update` first, then retry), or set {DATA_DIR_ENV} to a folder with its four IDX files"
    )


def read_idx(path: Path, magic: int) -> torch.Tensor:
    """An IDX file of unsigned bytes (optionally gzipped) as a uint8 tensor of the dimensions its header gives."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        raise FashionDataInvalid(f"{path} is not an IDX file with magic number {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    count = 1
    for d in dims:
        count *= d
    if len(raw) != header + count:
        raise FashionDataInvalid(f"{path}: its header gives dimensions {dims}, but it holds {len(raw) - header} bytes of data")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims)


@dataclass(frozen=True)
class PhotoSplit:
    images: torch.Tensor  # (N, H, W) uint8 grey photos
    labels: torch.Tensor  # (N,) int64 in [0, 10)


def holdout_indices(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Indices of Fashion-MNIST's train photos in our train, val and examples splits (per class, seeded)."""
    g = torch.Generator().manual_seed(HOLDOUT_SEED)
    parts: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "examples": []}
    for k in range(len(FASHION_CLASSES)):
        members = torch.nonzero(labels == k).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        n_val = len(members) // VAL_SHARE
        n_examples = min(EXAMPLES_PER_CLASS, n_val)
        parts["val"].append(members[:n_val])
        parts["examples"].append(members[n_val : n_val + n_examples])
        parts["train"].append(members[n_val + n_examples :])
    # Sorted: a split keeps the file's order, whatever the class.
    return {name: torch.cat(chunks).sort().values for name, chunks in parts.items()}


@dataclass(frozen=True)
class FashionMnist:
    """The four files, read; ``split`` gives clipforge's splits."""

    folder: Path  # where the IDX files were read from
    train: PhotoSplit  # Fashion-MNIST's 60,000 train photos (our train + val + examples)
    test: PhotoSplit  # its 10,000 test photos (our test)

    @functools.cached_property
    def _splits(self) -> dict[str, PhotoSplit]:
        # Built once: tasks draw from the same splits many times in a benchmark.
        held = holdout_indices(self.train.labels)
        splits = {name: PhotoSplit(self.train.images[index], self.train.labels[index]) for name, index in held.items()}
        return {**splits, "test": self.test}

    def split(self, name: str) -> PhotoSplit:
        if name not in self._splits:
            raise ValueError(f"unknown split {name!r}; one of {', '.join(SPLITS)}")
        return self._splits[name]


def _read_split(folder: Path, images_stem: str, labels_stem: str) -> PhotoSplit:
    images_path, labels_path = _idx_path(folder, images_stem), _idx_path(folder, labels_stem)
    assert images_path is not None and labels_path is not None
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC).long()
    if images.shape[0] != labels.shape[0]:
        raise FashionDataInvalid(f"{images_path.name} holds {images.shape[0]} images but {labels_path.name} {labels.shape[0]} labels")
    if labels.numel() and int(labels.max()) >= len(FASHION_CLASSES):
        raise FashionDataInvalid(f"{labels_path} has label {int(labels.max())}; Fashion-MNIST has {len(FASHION_CLASSES)} classes")
    return PhotoSplit(images, labels)


@functools.lru_cache(maxsize=2)
def _read_folder(folder: Path) -> FashionMnist:
    # Cached per folder: tasks render from the same 70,000 photos many times in a benchmark.
    return FashionMnist(
        folder,
        _read_split(folder, IDX_FILES["train_images"], IDX_FILES["train_labels"]),
        _read_split(folder, IDX_FILES["test_images"], IDX_FILES["test_labels"]),
    )


def load_fashion(source: FashionSource | None = None) -> FashionMnist:
    """Fashion-MNIST, located (and fetched if allowed) as the module doc says; read once per folder."""
    return _read_folder(locate_fashion(source).resolve())


def to_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 grey photos (N, H, W) as RGB floats in [0, 1], (N, 3, size, size): grey in all three channels."""
    pixels = images.float().div(255.0).unsqueeze(1)
    if pixels.shape[-1] != size or pixels.shape[-2] != size:
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return pixels.expand(-1, 3, -1, -1).contiguous()
