"""A sample bank: decoded prior samples and the teacher's image embeddings of them, made once per (teacher, decoder,
prior) and shared by every job on them.

On the ``cpu`` budget a job's synthesis is prior samples the teacher scores and chooses, and its distillation draws fresh
prior samples, decoded and put through the teacher at every step. None of that depends on the job's classes until the
last product with their text embeddings, so a bank holds it once: ``images`` decoded from the prior, a fixed set of
augmented ``views`` of each (their geometry, ``core.augment.view_params``) and the teacher's unit embeddings of each image
and view. A job's class logits are then ``logit_scale * embeddings @ classifier.T``: the teacher runs only on what the
bank lacks.

A bank is named by what it was made of (``BankKey``: the hashes of the teacher's and the decoder's weights and of the
prior, the sizes, the views' augmentation), so a changed teacher or prior is another bank, never this one. Stored as one
object whose header records the payload's sha256: a damaged or partial bank is refused (``BankDamagedError``) and built
again. Where the bytes live is the caller's (``BankStore``: a service's storage, a local folder), as with checkpoints.
Deterministic: the same key gives the same bank on the same machine, so two workers building one at once leave one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from core.augment import VIEW_PARAMS, AugmentConfig, apply_views, view_params
from core.stored import (
    BUILT,
    EMBED_BATCH,
    REBUILT,
    REUSED,
    CachedViews,
    ObjectStore,
    Obtained,
    StepCallback,
    StoredObjectDamagedError,
    obtain,
    pack,
    storage_object_store,
    unpack,
)
from core.synthesis import SynthesisConfig, prior_sampler
from core.teachers.base import Teacher

__all__ = ["BUILT", "REBUILT", "REUSED", "BankStore", "SampleBank", "bank_key", "obtain_bank", "storage_bank_store"]
BankStore = ObjectStore  # where banks are kept (core.stored): the caller's load and save callbacks
storage_bank_store = storage_object_store

BANK_FORMAT = 1
BANK_MAGIC = b"clipforge-sample-bank\n"
DEFAULT_BANK_IMAGES = 16384  # prior samples in a bank: 8x a default 8-class job's surrogate set, 2x its candidates
DEFAULT_BANK_VIEWS = 4  # augmented views of each image whose teacher embeddings the bank keeps
BANK_SEED = 20261205  # every bank draws from this seed: the same key, the same bank
BUILD_BATCH = 256  # images decoded and embedded together while building
BANKS_PREFIX = "banks"  # storage keys of banks: banks/<digest>.bank


class BankDamagedError(StoredObjectDamagedError):
    """Stored bytes that are not a whole bank of the expected key (truncated, altered, or another bank's)."""

    code = "bank_damaged"


def tensors_sha256(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A digest of named tensors (names, dtypes, shapes and bytes): equal weights, equal digests, on any device."""
    digest = hashlib.sha256()
    for name, tensor in named:
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def teacher_sha256(teacher: Teacher) -> str:
    """The teacher's weights' digest, computed once per loaded teacher (a worker keeps its teachers)."""
    cached = getattr(teacher, "_weights_sha256", None)
    if cached is None:
        cached = tensors_sha256(sorted(teacher.model.state_dict().items()))
        teacher._weights_sha256 = cached  # type: ignore[attr-defined]
    return cached


def bank_source(synthesis: SynthesisConfig) -> tuple[str, str] | None:
    """(decoder, prior) names of a synthesis a bank can serve: the decoder generator with a named prior. None otherwise:
    a prior fitted on a job's pool is that job's own (its images stay the tenant's), noise generators need no bank."""
    if synthesis.generator != "decoder":
        return None
    options = dict(synthesis.generator_options)
    decoder, prior = options.get("decoder"), options.get("prior", "fitted")
    if not isinstance(decoder, str) or not isinstance(prior, str):
        return None
    return decoder, prior


def prior_sha256(decoder: str, prior: str) -> str:
    """The digest of the decoder's weights and of the prior's tensors ("standard" is N(0, I): its name is its content)."""
    from core.generators.decoder import STANDARD_PRIOR, load_decoder, load_latent_prior

    named = [(f"decoder.{k}", v) for k, v in sorted(load_decoder(decoder).state_dict().items())]
    if prior != STANDARD_PRIOR:
        latent = load_latent_prior(decoder, prior)
        named += [("prior.means", latent.means), ("prior.scale_tril", latent.scale_tril), ("prior.weights", latent.weights)]
    else:
        named.append(("prior.standard", torch.zeros(0)))
    return tensors_sha256(named)


@dataclass(frozen=True)
class BankKey:
    """What a bank is made of; two banks with equal keys are the same bank."""

    teacher: str  # sha256 of the teacher's weights
    teacher_name: str  # for people: the teacher's name
    source: str  # sha256 of the decoder's weights and of its prior
    decoder: str  # for people: the decoder's name
    prior: str  # for people: the prior's name
    image_size: int  # the teacher's input size, the images' size
    images: int  # prior samples in the bank
    views: int  # augmented views kept per image
    augment: tuple[float, ...]  # the views' AugmentConfig, field by field
    format: int = BANK_FORMAT

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    @property
    def storage_key(self) -> str:
        return f"{BANKS_PREFIX}/{self.digest[:40]}.bank"

    def to_json(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "augment": list(self.augment)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> BankKey:
        fields = dict(data)
        fields["augment"] = tuple(float(x) for x in fields["augment"])  # type: ignore[union-attr]
        return cls(**fields)  # type: ignore[arg-type]


def bank_key(
    teacher: Teacher,
    synthesis: SynthesisConfig,
    augment: AugmentConfig,
    *,
    images: int = DEFAULT_BANK_IMAGES,
    views: int = DEFAULT_BANK_VIEWS,
) -> BankKey | None:
    """The key of the bank that serves ``synthesis`` on ``teacher``; None when no bank can (``bank_source``)."""
    source = bank_source(synthesis)
    if source is None:
        return None
    decoder, prior = source
    return BankKey(
        teacher=teacher_sha256(teacher),
        teacher_name=teacher.name,
        source=prior_sha256(decoder, prior),
        decoder=decoder,
        prior=prior,
        image_size=teacher.image_size,
        images=images,
        views=views,
        augment=tuple(float(v) for v in dataclasses.astuple(augment)),
    )


@dataclass(frozen=True)
class SampleBank(CachedViews):
    """Decoded prior samples (``images``: uint8, quantised as stored; the embeddings are of these), their views and the
    teacher's embeddings of both (core.stored.CachedViews), and what they were made of."""

    key: BankKey | None = None

    def to_bytes(self) -> bytes:
        assert self.key is not None
        tensors = {"images": self.images, "view_params": self.view_params, "embeddings": self.embeddings}
        return pack(BANK_MAGIC, self.key.to_json(), tensors)

    @classmethod
    def from_bytes(cls, data: bytes, expected: BankKey | None = None) -> SampleBank:
        """A stored bank, checked whole: its header, its payload's sha256 and size, and (given) its key."""
        header, tensors = unpack(data, BANK_MAGIC, BankDamagedError)
        try:
            key = BankKey.from_json(header)
        except Exception as exc:
            raise BankDamagedError(f"the bank's header is unreadable: {exc}") from None
        if expected is not None and key != expected:
            raise BankDamagedError("the stored bank was made of another teacher, decoder, prior or size than asked for")
        bank = cls(tensors["images"], tensors["view_params"], tensors["embeddings"], key)
        if len(bank) != key.images or bank.views != key.views or bank.view_params.shape[-1] != VIEW_PARAMS:
            raise BankDamagedError("the bank's tensors do not have its key's sizes")
        return bank


@torch.no_grad()
def build_bank(teacher: Teacher, synthesis: SynthesisConfig, key: BankKey, *, on_step: StepCallback | None = None) -> SampleBank:
    """Decode ``key.images`` prior samples of ``synthesis``'s generator, draw ``key.views`` views of each and embed all
    with the teacher. ``on_step(done, total)`` in teacher passes, after every EMBED_BATCH of them (it may raise to
    cancel): a slow teacher's bank reports every few seconds, not once a batch of 256 images and their views."""
    augment = AugmentConfig(*key.augment)
    rng = torch.Generator().manual_seed(BANK_SEED)
    sample = prior_sampler(synthesis, key.image_size, teacher.device)
    size, views = key.image_size, key.views
    images = torch.empty(key.images, 3, size, size, dtype=torch.uint8)
    params = torch.empty(key.images, views, VIEW_PARAMS)
    embeddings: torch.Tensor | None = None
    total, done = key.images * (1 + views), 0
    for start in range(0, key.images, BUILD_BATCH):
        n = min(BUILD_BATCH, key.images - start)
        quantised = (sample(n, rng).float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        pixels = quantised.float() / 255.0
        geometry = view_params(n * views, rng, augment).view(n, views, VIEW_PARAMS)
        viewed = apply_views(pixels.repeat_interleave(views, dim=0), geometry.view(-1, VIEW_PARAMS), size)
        parts = []
        for chunk in torch.cat([pixels, viewed]).split(EMBED_BATCH):
            parts.append(teacher.encode_image(chunk.to(teacher.device)).float().cpu())
            done += len(chunk)
            if on_step is not None:
                on_step(done, total)
        embedded = torch.cat(parts)
        if embeddings is None:
            embeddings = torch.empty(key.images, 1 + views, embedded.shape[-1])
        embeddings[start : start + n, 0] = embedded[:n]
        embeddings[start : start + n, 1:] = embedded[n:].view(n, views, -1)
        images[start : start + n], params[start : start + n] = quantised, geometry
    assert embeddings is not None
    return SampleBank(images, params, embeddings, key)


@dataclass(frozen=True)
class BankOutcome:
    bank: SampleBank
    status: str  # built (none was stored), reused, rebuilt (the stored one was damaged or another's)
    seconds: float  # to load or build it
    reason: str | None = None  # why a stored bank was rebuilt

    def summary(self) -> dict[str, object]:
        """What a job's metrics say of its bank."""
        key = self.bank.key
        assert key is not None
        return {"used": True, "status": self.status, "key": key.digest[:16], "images": key.images, "views": key.views,
                "seconds": round(self.seconds, 3), **({"reason": self.reason} if self.reason else {})}  # fmt: skip


def obtain_bank(
    store: BankStore, teacher: Teacher, synthesis: SynthesisConfig, key: BankKey, *, on_step: StepCallback | None = None
) -> BankOutcome:
    """The bank of ``key``: the stored one when it is whole and of that key, else built now and stored."""
    got: Obtained[SampleBank] = obtain(
        store,
        key.storage_key,
        lambda data: SampleBank.from_bytes(data, key),
        lambda: build_bank(teacher, synthesis, key, on_step=on_step),
        SampleBank.to_bytes,
    )
    return BankOutcome(got.value, got.status, got.seconds, got.reason)
