"""A user's unlabelled images from their own domain (a service's image pool) in a job.

Most of them are distilled on beside the synthesized images (``distillation.pool_share`` of each batch, labelled by the
teacher on the very view the student sees); a seeded tenth (at most MAX_HELD_OUT) is held out, and the student's
agreement with the teacher there is the one quality figure a job measures on real images of the user's domain.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.generators.decoder import DecoderHasNoEncoderError, LatentPrior, find_decoder_dir, load_encoder_from
from core.generators.priors import prior_of_images
from core.teachers.base import Teacher

HELD_OUT_SHARE = 0.1  # of the pool's images, kept out of distillation to measure agreement on
MAX_HELD_OUT = 512
MIN_POOL_IMAGES = 2  # one to distil on, one to hold out
POOL_STREAM = 7_777_777  # offset of the split's seed from every other draw of the job
MIN_PRIOR_IMAGES = 64  # a kernel density over fewer codes than this is no picture of a domain: the decoder's prior stays


@dataclass(frozen=True)
class PoolSplit:
    train: torch.Tensor  # (N, 3, S, S) pixels in [0, 1]: distilled on
    held_out: torch.Tensor  # (M, 3, S, S): agreement is measured on them


def split_pool(images: torch.Tensor, seed: int) -> PoolSplit:
    """A seeded split of the pool: the same images held out whatever else the job does."""
    if len(images) < MIN_POOL_IMAGES:
        raise ValueError(f"a pool needs at least {MIN_POOL_IMAGES} images, this one has {len(images)}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed + POOL_STREAM))
    held = min(MAX_HELD_OUT, max(1, round(HELD_OUT_SHARE * len(images))))
    return PoolSplit(images[order[held:]], images[order[:held]])


def pool_sampler(images: torch.Tensor):
    """An ImageSampler (core.distill) drawing the pool's images with the distiller's generator."""

    def sample(n: int, rng: torch.Generator) -> torch.Tensor:
        return images[torch.randint(len(images), (n,), generator=rng)]

    return sample


@torch.no_grad()
def held_out_agreement(student: nn.Module, teacher: Teacher, classifier: torch.Tensor, images: torch.Tensor, batch: int = 256) -> dict:
    """How often the student picks the teacher's class on the held-out pool images, and the teacher's classes there."""
    student_size = int(getattr(student, "image_size", images.shape[-1]))
    agree, counts = 0, torch.zeros(classifier.shape[0], dtype=torch.long)
    for start in range(0, len(images), batch):
        pixels = images[start : start + batch]
        teacher_class = teacher.classify(pixels.to(teacher.device), classifier).argmax(1).cpu()
        resized = pixels if pixels.shape[-1] == student_size else F.interpolate(pixels, size=student_size, mode="bilinear", antialias=True)
        student_class = student(resized.to(next(student.parameters()).device)).argmax(1).cpu()
        agree += int((student_class == teacher_class).sum())
        counts += torch.bincount(teacher_class, minlength=len(counts))
    return {"held_out_images": len(images), "agreement": round(agree / max(1, len(images)), 4), "teacher_classes": counts.tolist()}


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
