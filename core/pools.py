"""A user's unlabelled images from their own domain (a service's image pool) in a job, every teacher pass on them paid once.

The teacher's unit embeddings of every pool image and of ``views`` augmented views of each (their geometry kept, so a
view is rebuilt exactly) are made once per (pool content, teacher weights, view recipe) and stored as one object
(``PoolEmbeddings``, core.stored: checked whole on load, a damaged or foreign one rebuilt, never used). Every job on the
pool, whatever its classes, then reads its teacher logits as ``logit_scale * embeddings @ classifier.T``: it chooses its
surrogate images among the pool's (the pool generator), distils on the pool's views (``distillation.pool_share`` of
each batch) and measures its agreement on a held-out tenth, all without the teacher in its loop.

Pools are streamed: a job keeps its images in memory at the student's size only (uint8: 100,000 images of 32 px are
307 MB), and decodes each image at the teacher's size once, batch by batch, while its embeddings are built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.augment import VIEW_PARAMS, AugmentConfig, apply_views, view_params
from core.generators.decoder import DecoderHasNoEncoderError, LatentPrior, find_decoder_dir, load_encoder_from
from core.generators.priors import prior_of_images
from core.stored import CachedViews, ObjectStore, Obtained, StepCallback, StoredObjectDamagedError, obtain, pack, unpack

HELD_OUT_SHARE = 0.1  # of the pool's images, kept out of distillation to measure agreement on
MAX_HELD_OUT = 512
MIN_POOL_IMAGES = 2  # one to distil on, one to hold out
POOL_STREAM = 7_777_777  # offset of the split's seed from every other draw of the job
MIN_PRIOR_IMAGES = 64  # a kernel density over fewer codes than this is no picture of a domain: the decoder's prior stays
MAX_PRIOR_IMAGES = 4096  # pool images a prior is fitted on at most: they are decoded at the teacher's size together
POOL_VIEWS_SEED = 20261207  # every pool's views draw from this seed: the same key, the same embeddings
PASSES_PER_STEP = 64  # teacher passes (images and views) between two progress reports while building
POOL_EMBEDDINGS_FORMAT = 1
POOL_EMBEDDINGS_MAGIC = b"clipforge-pool-embeddings\n"
POOL_EMBEDDINGS_PREFIX = "pool-embeddings"  # storage keys: pool-embeddings/<digest>.emb


class PoolEmbeddingsDamagedError(StoredObjectDamagedError):
    code = "pool_embeddings_damaged"


# (index, size) -> (3, size, size) float pixels in [0, 1]: pool image ``index`` decoded at ``size``.
PixelReader = Callable[[int, int], torch.Tensor]


def resize(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, S, S) float pixels at ``size`` (antialiased, as the teacher resizes its input)."""
    if pixels.shape[-1] == size and pixels.shape[-2] == size:
        return pixels
    return F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def quantise(pixels: torch.Tensor) -> torch.Tensor:
    """Float pixels in [0, 1] -> uint8."""
    return (pixels.float().clamp(0, 1) * 255).round().to(torch.uint8)


@dataclass(frozen=True)
class PoolSource:
    """A job's pool: its images in memory at the job's working size (the student's), and a reader that decodes any of
    them again at another size (the teacher's), so that no teacher-size copy of the pool is ever held whole."""

    pixels: torch.Tensor  # (N, 3, S, S) uint8 at the working size
    content_sha256: str  # which images, byte for byte, in this order: the embeddings' key
    read: PixelReader  # image i at any size

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def at(self, index: torch.Tensor, size: int) -> torch.Tensor:
        """Images ``index`` as float pixels at ``size``."""
        if self.pixels.shape[-1] == size:
            return self.pixels[index].float() / 255.0
        return torch.stack([self.read(int(i), size) for i in index])

    @classmethod
    def from_pixels(cls, pixels: torch.Tensor, size: int | None = None) -> PoolSource:
        """A pool held in memory as float pixels (N, 3, S, S) in [0, 1] (an API caller's, a test's), kept at ``size``."""
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"a pool is (N, 3, S, S) images, got shape {tuple(pixels.shape)}")
        stored = quantise(pixels)
        digest = hashlib.sha256(f"{tuple(stored.shape)}".encode() + stored.numpy().tobytes()).hexdigest()
        working = stored if size is None else quantise(resize(stored.float() / 255.0, size))
        return cls(working, digest, lambda index, at: resize(stored[index : index + 1].float() / 255.0, at)[0])

    @classmethod
    def from_files(cls, read_bytes: Sequence[Callable[[], bytes]], content_sha256: str, size: int) -> PoolSource:
        """A pool of image files (a folder's, a service's storage's): each decoded once at ``size`` now, and again at
        another size when asked. ``content_sha256`` names them (the caller knows their bytes' digests)."""
        from PIL import Image

        from core.images import to_pixels

        def read(index: int, at: int) -> torch.Tensor:
            with Image.open(io.BytesIO(read_bytes[index]())) as image:
                return to_pixels(image, at)

        pixels = torch.empty(len(read_bytes), 3, size, size, dtype=torch.uint8)
        for index in range(len(read_bytes)):
            pixels[index] = quantise(read(index, size))
        return cls(pixels, content_sha256, read)

    @classmethod
    def from_folder(cls, folder: str | Path, size: int) -> PoolSource:
        """Every image under ``folder`` (core.generators.image_folder's order and digest), decoded at ``size``."""
        from core.generators.image_folder import load_image_folder

        images = load_image_folder(folder, size)
        paths = [images.folder / name for name in images.files]
        return cls(images.pixels, images.content_sha256, _file_reader(paths))


def _file_reader(paths: Sequence[Path]) -> PixelReader:
    from PIL import Image

    from core.images import to_pixels

    def read(index: int, size: int) -> torch.Tensor:
        with Image.open(paths[index]) as image:
            return to_pixels(image, size)

    return read


@dataclass(frozen=True)
class PoolEmbeddingsKey:
    """What a pool's embeddings are made of; two with equal keys are the same."""

    pool: str  # sha256 of the pool's content, in its order
    images: int  # the pool's images
    teacher: str  # sha256 of the teacher's weights
    teacher_name: str  # for people
    image_size: int  # the teacher's input size: the images are embedded at it
    views: int  # augmented views kept per image
    augment: tuple[float, ...]  # the views' AugmentConfig, field by field
    encoder: str = "torch"  # the image tower that embedded them: torch, or onnxruntime fp32 / int8 (core.teachers.onnx_tower)
    format: int = POOL_EMBEDDINGS_FORMAT

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    @property
    def storage_key(self) -> str:
        return f"{POOL_EMBEDDINGS_PREFIX}/{self.digest[:40]}.emb"

    def to_json(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "augment": list(self.augment)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> PoolEmbeddingsKey:
        fields = dict(data)
        fields["augment"] = tuple(float(x) for x in fields["augment"])  # type: ignore[union-attr]
        return cls(**fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PoolEmbeddings:
    key: PoolEmbeddingsKey
    view_params: torch.Tensor  # (N, V, VIEW_PARAMS) float32
    embeddings: torch.Tensor  # (N, 1 + V, D) float16: a 512-d embedding is 1 KB; 100,000 images with 4 views 0.5 GB

    def to_bytes(self) -> bytes:
        return pack(POOL_EMBEDDINGS_MAGIC, self.key.to_json(), {"view_params": self.view_params, "embeddings": self.embeddings})

    @classmethod
    def from_bytes(cls, data: bytes, expected: PoolEmbeddingsKey | None = None) -> PoolEmbeddings:
        header, tensors = unpack(data, POOL_EMBEDDINGS_MAGIC, PoolEmbeddingsDamagedError)
        try:
            key = PoolEmbeddingsKey.from_json(header)
        except Exception as exc:
            raise PoolEmbeddingsDamagedError(f"the pool embeddings' header is unreadable: {exc}") from None
        if expected is not None and key != expected:
            raise PoolEmbeddingsDamagedError("the stored pool embeddings were made of another pool, teacher or view recipe")
        made = cls(key, tensors["view_params"], tensors["embeddings"])
        n, views = key.images, key.views
        if made.view_params.shape != (n, views, VIEW_PARAMS) or made.embeddings.shape[:2] != (n, 1 + views):
            raise PoolEmbeddingsDamagedError("the pool embeddings' tensors do not have their key's sizes")
        return made


def pool_embeddings_key(
    source: PoolSource, teacher_sha256: str, teacher_name: str, image_size: int, *, views: int, augment: AugmentConfig, encoder: str
) -> PoolEmbeddingsKey:
    return PoolEmbeddingsKey(
        pool=source.content_sha256,
        images=len(source),
        teacher=teacher_sha256,
        teacher_name=teacher_name,
        image_size=image_size,
        views=views,
        augment=tuple(float(v) for v in dataclasses.astuple(augment)),
        encoder=encoder,
    )


@torch.no_grad()
def build_pool_embeddings(
    encode: Callable[[torch.Tensor], torch.Tensor], source: PoolSource, key: PoolEmbeddingsKey, *, on_step: StepCallback | None = None
) -> PoolEmbeddings:
    """Embed every pool image and ``key.views`` views of each with ``encode`` (pixels at the teacher's size -> unit
    embeddings), decoding ``PASSES_PER_STEP // (1 + views)`` images at a time; ``on_step(images done, images)`` after each
    step (it may raise to cancel)."""
    augment, views, size = AugmentConfig(*key.augment), key.views, key.image_size
    params = view_params(len(source) * views, torch.Generator().manual_seed(POOL_VIEWS_SEED), augment).view(len(source), views, -1)
    embeddings: torch.Tensor | None = None
    step = max(1, PASSES_PER_STEP // (1 + views))
    for start in range(0, len(source), step):
        index = torch.arange(start, min(start + step, len(source)))
        pixels = source.at(index, size)
        viewed = apply_views(pixels.repeat_interleave(views, dim=0), params[index].reshape(-1, VIEW_PARAMS), size)
        embedded = encode(torch.cat([pixels, viewed])).float().cpu()
        if embeddings is None:
            embeddings = torch.empty(len(source), 1 + views, embedded.shape[-1], dtype=torch.float16)
        embeddings[index, 0] = embedded[: len(index)].half()
        embeddings[index, 1:] = embedded[len(index) :].view(len(index), views, -1).half()
        if on_step is not None:
            on_step(int(index[-1]) + 1, len(source))
    assert embeddings is not None
    return PoolEmbeddings(key, params, embeddings)


@dataclass(frozen=True)
class PoolViews:
    """A job's pool with the teacher's embeddings of its images and views (core.stored.CachedViews), and how they were
    obtained, for the job's metrics."""

    views: CachedViews  # every pool image at the working size, its views and their embeddings
    summary: dict[str, object]  # built, reused or rebuilt (and why), the key, seconds, the encoder
    source: PoolSource  # the images, to decode again at another size (a prior fitted at the decoder's)


def obtain_pool_views(
    store: ObjectStore | None,
    source: PoolSource,
    key: PoolEmbeddingsKey,
    encode: Callable[[torch.Tensor], torch.Tensor],
    *,
    on_step: StepCallback | None = None,
) -> PoolViews:
    """The pool's embeddings of ``key``: the stored ones when whole and of that key, else built now (and stored)."""
    got: Obtained[PoolEmbeddings] = obtain(
        store,
        key.storage_key,
        lambda data: PoolEmbeddings.from_bytes(data, key),
        lambda: build_pool_embeddings(encode, source, key, on_step=on_step),
        PoolEmbeddings.to_bytes,
    )
    made = got.value
    summary = {"status": got.status, "key": key.digest[:16], "images": key.images, "views": key.views, "encoder": key.encoder,
               "seconds": round(got.seconds, 3), **({"reason": got.reason} if got.reason else {})}  # fmt: skip
    return PoolViews(CachedViews(source.pixels, made.view_params, made.embeddings), summary, source)


@dataclass(frozen=True)
class PoolSplit:
    train: CachedViews  # distilled on (and the pool generator's images)
    held_out: CachedViews  # agreement is measured on them


def split_indices(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the distilled-on and the held-out images: a seeded split, the same whatever else the job does."""
    if count < MIN_POOL_IMAGES:
        raise ValueError(f"a pool needs at least {MIN_POOL_IMAGES} images, this one has {count}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + POOL_STREAM))
    held = min(MAX_HELD_OUT, max(1, round(HELD_OUT_SHARE * count)))
    return order[held:], order[:held]


def split_pool(pool: CachedViews, seed: int) -> PoolSplit:
    train, held_out = split_indices(len(pool), seed)
    return PoolSplit(pool.subset(train), pool.subset(held_out))


@torch.no_grad()
def held_out_agreement(student: nn.Module, classifier: torch.Tensor, logit_scale: float, held_out: CachedViews, batch: int = 256) -> dict:
    """How often the student picks the teacher's class on the held-out pool images (the teacher's from its cached
    embeddings), and the teacher's classes there."""
    student_size = int(getattr(student, "image_size", held_out.images.shape[-1]))
    device = next(student.parameters()).device
    agree, counts = 0, torch.zeros(classifier.shape[0], dtype=torch.long)
    for index in torch.arange(len(held_out)).split(batch):
        teacher_class = held_out.logits(classifier, logit_scale, index).argmax(1).cpu()
        student_class = student(resize(held_out.pixels(index), student_size).to(device)).argmax(1).cpu()
        agree += int((student_class == teacher_class).sum())
        counts += torch.bincount(teacher_class, minlength=len(counts))
    return {"held_out_images": len(held_out), "agreement": round(agree / max(1, len(held_out)), 4), "teacher_classes": counts.tolist()}


def fit_pool_prior(generator: str, decoder: str | None, images: torch.Tensor, device: torch.device) -> LatentPrior | str:
    """A kernel density prior over the decoder's encoder's codes of the pool's ``images`` (core.generators.priors, the
    fit ``clipforge priors build`` makes of a folder); else why not, as a short reason for the job's metrics."""
    if generator != "decoder" or decoder is None:
        return f"generator {generator!r} has no latent codes"
    if len(images) < MIN_PRIOR_IMAGES:
        return f"{len(images)} pool images to fit on, fewer than {MIN_PRIOR_IMAGES}"
    try:
        encoder = load_encoder_from(find_decoder_dir(decoder))
    except DecoderHasNoEncoderError:
        return f"decoder {decoder!r} ships no encoder"
    return prior_of_images(encoder.to(device), images)
