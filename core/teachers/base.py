"""The teacher interface: a frozen CLIP with normalised image and text embeddings."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from core.spec import DEFAULT_STYLES, DEFAULT_VOCABULARY

DEFAULT_TEMPLATE = "a photo of a {}."


class Teacher(nn.Module):
    """A frozen CLIP model behind one small interface.

    ``encode_image`` takes RGB pixels in [0, 1] (any size: they are resized to the teacher's
    input size) and applies the teacher's normalisation itself, so it stays differentiable
    with respect to the pixels, as inversion needs. Both encoders return unit vectors.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        tokenizer: Callable[[Sequence[str]], torch.Tensor],
        *,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        styles: Sequence[str] | None = None,
        decoder: str | None = None,
        vocabulary: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        # The style dictionary that suits this teacher's vocabulary (SDD); the paper-like default otherwise.
        self.default_styles: tuple[str, ...] = tuple(styles) if styles else DEFAULT_STYLES
        # A pretrained latent decoder for this teacher's image domain (the image prior "auto" picks), if any.
        self.paired_decoder: str | None = decoder
        # Object names the teacher knows (its captions' nouns): a job takes images the teacher gives to the ones outside
        # the job for out-of-class examples when it calibrates its "unknown" answer (core.calibration); a generic list
        # of everyday objects otherwise.
        self.vocabulary: tuple[str, ...] = tuple(vocabulary) if vocabulary else DEFAULT_VOCABULARY
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def logit_scale(self) -> float:
        """CLIP's temperature tau (100 for OpenAI's models)."""
        return float(self.model.logit_scale.detach().exp().clamp(max=100.0))

    def _autocast(self) -> AbstractContextManager[None]:
        # bf16 on CUDA: the teacher is frozen, so reduced precision costs little accuracy.
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-1] != self.image_size or pixels.shape[-2] != self.image_size:
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True)
        return (pixels - self.mean) / self.std

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            features = self.model.encode_image(self.normalize(pixels.to(self.device)))
        return F.normalize(features.float(), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        with self._autocast():
            features = self.model.encode_text(tokens)
        return F.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def class_embeddings(self, class_texts: Sequence[str], template: str = DEFAULT_TEMPLATE) -> torch.Tensor:
        """Unit text embeddings of ``template`` filled with each class text, (K, D)."""
        return self.encode_text([template.format(t) for t in class_texts])

    @torch.no_grad()
    def classify(self, pixels: torch.Tensor, class_weights: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Zero-shot logits (tau * cosine) of ``pixels`` against unit class embeddings."""
        logits = [self.logit_scale * self.encode_image(chunk) @ class_weights.T for chunk in pixels.split(batch_size)]
        return torch.cat(logits)


TIMING_IMAGES = 8  # images of the short timing that prices a teacher's image pass on this machine
TIMING_BATCH_IMAGES = 64  # ... and of the second, longer one: the marginal cost of the images beyond the first call's
TIMING_BATCH_MAX_SECONDS = 2.0  # the second timing runs where the first took less than this (ViT-B-32: 0.9 s on 2 cores)


@torch.no_grad()
def seconds_per_image(teacher: Teacher) -> float:
    """The teacher's image pass on this machine, in seconds per image: timed once per loaded teacher (a worker keeps
    its teachers) on TIMING_IMAGES random images after one warm-up pass, then on TIMING_BATCH_IMAGES, the price being
    the extra images' marginal cost. A call's fixed cost is large on a busy machine (eight shapes-mini images timed
    72 ms an image where a bank's batches cost 8 ms), and jobs embed in batches; so that a job's estimate prices its
    teacher passes with what they cost here, whatever the teacher (core.estimate)."""
    cached = getattr(teacher, "_seconds_per_image", None)
    if cached is None:
        generator = torch.Generator().manual_seed(0)
        teacher.encode_image(torch.rand(1, 3, teacher.image_size, teacher.image_size, generator=generator))
        timed: list[float] = []
        for count in (TIMING_IMAGES, TIMING_BATCH_IMAGES):
            pixels = torch.rand(count, 3, teacher.image_size, teacher.image_size, generator=generator)
            began = time.perf_counter()
            teacher.encode_image(pixels)
            timed.append(time.perf_counter() - began)
            if timed[0] >= TIMING_BATCH_MAX_SECONDS:
                break  # a large teacher: a few images say enough
        cached = timed[0] / TIMING_IMAGES
        if len(timed) == 2:
            marginal = (timed[1] - timed[0]) / (TIMING_BATCH_IMAGES - TIMING_IMAGES)
            cached = marginal if marginal > 0 else timed[1] / TIMING_BATCH_IMAGES
        teacher._seconds_per_image = cached  # type: ignore[attr-defined]
    return cached
