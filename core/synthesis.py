"""Stage 1: invert the teacher to synthesise a labelled surrogate data set (METHOD.md).

The set is made batch by batch, and each batch draws only from its own generator, seeded from the job's seed and the
batch's index: not from torch's global RNG, nor from what earlier batches did (their initial codes, teacher-chosen
starts, cutouts and pool growth are all its own). So any runs of batches (``synthesize_batches``: a service's chunks,
in any process and order) ``assemble`` into the very set ``synthesize`` makes in one go.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from core.augment import AugmentConfig, random_views
from core.generators import create_generator
from core.losses import BatchNormStatistics, consistency_loss, matching_loss, total_variation
from core.stored import CachedViews
from core.teachers.base import DEFAULT_TEMPLATE, Teacher

STYLE_TEMPLATE = "a {text} in the style of {style}."
# DeepInversion baseline weights: the BatchNorm term dominates, TV keeps images smooth.
BN_WEIGHT = 1.0
TV_WEIGHT = 1.0


@dataclass(frozen=True)
class ClassPrompts:
    """What one class's synthetic images must match: a text, example images, or both."""

    text: str | None  # the class text (with any constraint phrase); None for image-only classes
    examples: torch.Tensor | None = None  # (M, 3, H, W) pixels in [0, 1]


@dataclass(frozen=True)
class InversionTargets:
    """Teacher embeddings of every class's prompts; rows of unit vectors."""

    classifier: torch.Tensor  # (K, D): the teacher's zero-shot head S (text), P (prototypes) or their mean
    text: torch.Tensor  # (K, D) plain prompt embeddings (zeros where a class has no text)
    styled: torch.Tensor  # (K, N_styles, D) "<text> in the style of <style>" (N_styles may be 0)
    prototypes: torch.Tensor  # (K, D) normalised mean image embeddings (zeros where no examples)
    has_text: torch.Tensor  # (K,) bool
    has_images: torch.Tensor  # (K,) bool
    styles: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return int(self.classifier.shape[0])


@torch.no_grad()
def build_targets(teacher: Teacher, classes: Sequence[ClassPrompts], styles: Sequence[str]) -> InversionTargets:
    device = teacher.device
    k = len(classes)
    dim = teacher.encode_text(["a"]).shape[-1]
    text = torch.zeros(k, dim, device=device)
    styled = torch.zeros(k, len(styles), dim, device=device)
    prototypes = torch.zeros(k, dim, device=device)
    has_text = torch.tensor([c.text is not None for c in classes])
    has_images = torch.tensor([c.examples is not None and len(c.examples) > 0 for c in classes])
    if not bool((has_text | has_images).all()):
        raise ValueError("every class needs a text or example images")
    for i, c in enumerate(classes):
        if c.text is not None:
            text[i] = teacher.encode_text([DEFAULT_TEMPLATE.format(c.text)])[0]
            if styles:
                styled[i] = teacher.encode_text([STYLE_TEMPLATE.format(text=c.text, style=s) for s in styles])
        if c.examples is not None and len(c.examples) > 0:
            prototypes[i] = torch.nn.functional.normalize(teacher.encode_image(c.examples.to(device)).mean(0), dim=0)
    # A class given by both text and images is classified by the mean of both directions.
    classifier = torch.nn.functional.normalize(text + prototypes, dim=-1)
    return InversionTargets(classifier, text, styled, prototypes, has_text.to(device), has_images.to(device), tuple(styles))


@dataclass(frozen=True)
class SurrogateSet:
    images: torch.Tensor  # (N, 3, S, S) pixels in [0, 1], on the CPU
    labels: torch.Tensor  # (N,) class index
    styles: torch.Tensor  # (N,) style index, -1 where no style was used
    # (N,) the index in the job's bank (or pool) of each image drawn from it without inversion, -1 elsewhere: the teacher's
    # cached embeddings of its views stand for new passes (core.distill). None: no image was drawn from a bank.
    sources: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.sources is None:
            object.__setattr__(self, "sources", torch.full((len(self.labels),), -1, dtype=torch.long))

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class SynthesisConfig:
    images_per_class: int = 64  # surrogate images per class
    steps: int = 400  # Adam steps per batch of images
    lr: float = 0.1  # Adam learning rate
    generator: str = "fourier"  # see core.generators
    generator_options: tuple[tuple[str, object], ...] = ()  # extra factory kwargs, e.g. (("decoder", "shapes-vae"),)
    cutouts: int = 8  # augmented views per image per step
    use_styles: bool = True  # SDD
    class_consistency_weight: float = 1.0  # CCM; 0 disables
    batch_size: int = 64  # images optimised together
    objective: str = "matching"  # "matching" (the method) or "bn_inversion" (DeepInversion baseline)
    prior_weight: float = 0.0  # weight of the generator's prior term (codes kept where its latent prior has mass)
    init_candidates: int = 1  # candidate starts per image; the teacher keeps the most class-like one (1: no selection)
    neighbours: int = 0  # pool growth: extra images per optimised one, decoded from its parameters + neighbour_scale * noise
    neighbour_scale: float = 0.5  # noise on the generator's parameters (whitened codes for the decoder)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    thin_class_steps: int = 0  # with steps 0: inversion steps for the images of thin_classes only (no pool growth then)
    coverage_threshold: float = 0.7  # prior coverage below which a class is thin (core.coverage, in the preparing stage)
    coverage_samples: int = 1024  # prior samples the teacher scores to measure that coverage
    thin_classes: tuple[int, ...] = ()  # the classes found thin: set by the preparing stage, the same in every process
    thin_class_consistency_weight: float = 1.0  # class_consistency_weight in the thin classes' inversion

    def thin_steps_for(self, labels: torch.Tensor) -> int:
        """Inversion steps a batch with these labels gets beyond ``steps``: thin_class_steps when it holds a thin class."""
        if self.steps or not self.thin_class_steps or not self.thin_classes or self.neighbours:
            return 0
        return self.thin_class_steps if bool(torch.isin(labels, torch.tensor(self.thin_classes)).any()) else 0


StepCallback = Callable[[int, int], None]  # (units done, units in total); may raise to cancel
# Seeds of the per-batch generators: batch b of a job with seed s draws from torch.Generator().manual_seed(s * SEED_STRIDE + b),
# and from nothing else, so that a batch comes out the same whichever process runs it and whatever ran before it.
SEED_STRIDE = 1_000_003
BANK_STREAM = 999_979  # offset of the seed of a job's order of bank candidates (a prime, never a batch index)


def _assignments(num_classes: int, num_styles: int, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced labels, and styles cycling within each class so every class sees every style."""
    index = torch.arange(total)
    labels = index % num_classes
    styles = (index // num_classes) % num_styles if num_styles else torch.full((total,), -1)
    return labels, styles


def batch_ranges(num_classes: int, config: SynthesisConfig) -> list[tuple[int, int]]:
    """(start, stop) of every batch of the surrogate set, in its order: batch b is ``ranges[b]``."""
    total = num_classes * config.images_per_class
    return [(start, min(start + config.batch_size, total)) for start in range(0, total, config.batch_size)]


def plan_chunks(num_batches: int, batches_per_chunk: int, max_chunks: int) -> list[list[int]]:
    """The batch indices of each chunk: runs of ``batches_per_chunk`` consecutive batches, more per chunk where that
    would make over ``max_chunks`` chunks; ``batches_per_chunk`` 0 (or one batch in all) keeps them in one chunk."""
    if num_batches <= 0:
        return []
    if batches_per_chunk <= 0:
        return [list(range(num_batches))]
    per_chunk = max(batches_per_chunk, math.ceil(num_batches / max(1, max_chunks)))
    return [list(range(start, min(start + per_chunk, num_batches))) for start in range(0, num_batches, per_chunk)]


@dataclass(frozen=True)
class SurrogateChunk:
    """The images of some of the surrogate set's batches, with where they go in it (``assemble`` puts them there)."""

    batch_indices: tuple[int, ...]
    positions: torch.Tensor  # (n,) index of each image in the surrogate set (before pool growth)
    images: torch.Tensor  # (n, 3, S, S) pixels in [0, 1], on the CPU
    labels: torch.Tensor  # (n,)
    styles: torch.Tensor  # (n,)
    neighbours: torch.Tensor  # (copies, n, 3, S, S): pool growth's images of each one (copies may be 0)
    sources: torch.Tensor | None = None  # (n,) bank index of each image drawn from the bank, -1 elsewhere (SurrogateSet)

    def __post_init__(self) -> None:
        if self.sources is None:
            object.__setattr__(self, "sources", torch.full((len(self.positions),), -1, dtype=torch.long))

    def __len__(self) -> int:
        return int(self.positions.shape[0])


def synthesize_batches(
    teacher: Teacher,
    targets: InversionTargets,
    config: SynthesisConfig,
    batch_indices: Sequence[int],
    *,
    seed: int,
    on_step: StepCallback | None = None,
    bank: CachedViews | None = None,
) -> SurrogateChunk:
    """Synthesize the batches ``batch_indices`` of the surrogate set. Each batch depends only on (seed, its index, the
    teacher, the targets, the config): not on torch's global RNG, nor on the batches run before it, so chunks run in any
    order and in any process give the same surrogate set. ``on_step`` counts ``steps + 1`` units a batch (its steps, and
    the batch itself once its images are out), so that a job with no inversion steps still reports progress.
    ``bank``: a sample bank of the config's generator and prior (core.bank); a batch without inversion steps then
    chooses its images among the bank's, scored from its cached embeddings, instead of decoding and scoring new ones."""
    device = teacher.device
    num_styles = len(targets.styles) if config.use_styles else 0
    ranges = batch_ranges(targets.num_classes, config)
    total = targets.num_classes * config.images_per_class
    labels, styles = _assignments(targets.num_classes, num_styles, total)
    unknown = [b for b in batch_indices if not 0 <= b < len(ranges)]
    if unknown or len(set(batch_indices)) != len(batch_indices):
        raise ValueError(f"batch indices {list(batch_indices)} are not distinct batches of 0..{len(ranges) - 1}")
    positions = torch.cat([torch.arange(*ranges[b]) for b in batch_indices]) if batch_indices else torch.zeros(0, dtype=torch.long)
    size = teacher.image_size if bank is None else int(bank.images.shape[-1])  # a pool's images are kept at the student's size
    images = torch.empty(len(positions), 3, size, size)
    sources = torch.full((len(positions),), -1, dtype=torch.long)
    grown = torch.empty(config.neighbours, *images.shape)
    total_units = sum(config.steps + config.thin_steps_for(labels[slice(*ranges[b])]) + 1 for b in batch_indices)
    done, offset = 0, 0
    for batch_index in batch_indices:
        start, stop = ranges[batch_index]
        rng = torch.Generator().manual_seed(seed * SEED_STRIDE + batch_index)
        y = labels[start:stop].to(device)
        s = styles[start:stop].to(device)
        if bank is not None and not config.steps and not config.neighbours and not config.thin_steps_for(y.cpu()):
            chosen = _from_bank(bank, teacher, targets, config, y, ranges[batch_index][0], seed)
            images[offset : offset + stop - start], sources[offset : offset + stop - start] = bank.pixels(chosen), chosen
            offset += stop - start
            done += 1
            if on_step is not None:
                on_step(done, total_units)
            continue
        generator = create_generator(
            config.generator,
            (stop - start) * config.init_candidates,
            teacher.image_size,
            rng=rng,
            device=device,
            **dict(config.generator_options),
        )
        if config.init_candidates > 1:
            generator.keep(select_starts(teacher, targets.classifier, generator, y))
        done = _invert(generator, teacher, targets, config, y, s, rng, config.steps, done, total_units, on_step)
        size = stop - start
        with torch.no_grad():
            images[offset : offset + size] = _resized(generator().float().cpu(), images.shape[-1])
            for copy in range(config.neighbours):
                grown[copy, offset : offset + size] = _resized(_neighbours(generator, config.neighbour_scale, rng), images.shape[-1])
        if thin_steps := config.thin_steps_for(y.cpu()):  # never with neighbours
            # The thin classes' images alone are inverted from their starts; the others stay the prior samples chosen.
            thin = torch.isin(y.cpu(), torch.tensor(config.thin_classes)).nonzero(as_tuple=True)[0]
            generator.keep(thin)
            on_device = thin.to(device)
            inversion = dataclasses.replace(config, class_consistency_weight=config.thin_class_consistency_weight)
            labels_on, styles_on = y[on_device], s[on_device]
            done = _invert(generator, teacher, targets, inversion, labels_on, styles_on, rng, thin_steps, done, total_units, on_step)
            with torch.no_grad():
                images[offset + thin] = _resized(generator().float().cpu(), images.shape[-1])
        offset += size
        done += 1
        if on_step is not None:
            on_step(done, total_units)
    return SurrogateChunk(tuple(batch_indices), positions, images, labels[positions], styles[positions], grown, sources)


def _resized(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Pixels at ``size`` (a set drawn partly from a pool kept at the student's size)."""
    if pixels.shape[-1] == size:
        return pixels
    return torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def _from_bank(
    bank: CachedViews, teacher: Teacher, targets: InversionTargets, config: SynthesisConfig, labels: torch.Tensor, first: int, seed: int
) -> torch.Tensor:
    """The bank indices of the images of a batch whose first image is the set's ``first``: ``init_candidates`` bank images
    per image, the job's own run through the bank (a seeded order: batches take disjoint candidates while the bank lasts),
    and of them the ones the teacher finds most class-like, as ``select_starts`` chooses among fresh prior samples."""
    order = torch.randperm(len(bank), generator=torch.Generator().manual_seed(seed * SEED_STRIDE + BANK_STREAM))
    count = len(labels) * config.init_candidates
    candidates = order[(first * config.init_candidates + torch.arange(count)) % len(bank)]
    probabilities = bank.logits(targets.classifier, teacher.logit_scale, candidates).float().softmax(-1)
    return candidates[choose_per_class(probabilities, labels).cpu()]


def _invert(
    generator: torch.nn.Module,
    teacher: Teacher,
    targets: InversionTargets,
    config: SynthesisConfig,
    labels: torch.Tensor,
    styles: torch.Tensor,
    rng: torch.Generator,
    steps: int,
    done: int,
    total_units: int,
    on_step: StepCallback | None,
) -> int:
    """``steps`` Adam steps of the inversion loss on the generator's images (labels and styles, one per image); the
    units done after them."""
    optimizer = torch.optim.Adam([p for p in generator.parameters() if p.requires_grad], lr=config.lr)
    for _ in range(steps):
        loss = _inversion_loss(teacher, targets, config, generator(), labels, styles, rng)
        if config.prior_weight > 0:
            loss = loss + config.prior_weight * generator.prior_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done += 1
        if on_step is not None:
            on_step(done, total_units)
    return done


def assemble(chunks: Sequence[SurrogateChunk]) -> SurrogateSet:
    """The surrogate set from chunks that hold every one of its batches once, in any order; pool growth's images follow
    the optimised ones, copy by copy, each keeping its image's label and style (KD takes the teacher's view of them)."""
    if not chunks:
        raise ValueError("no chunks to assemble")
    positions = torch.cat([c.positions for c in chunks])
    total = len(positions)
    if not torch.equal(positions.sort().values, torch.arange(total)):
        raise ValueError("the chunks do not cover the surrogate set's images exactly once")
    copies = {int(c.neighbours.shape[0]) for c in chunks}
    if len(copies) != 1:
        raise ValueError(f"the chunks grew different numbers of neighbours: {sorted(copies)}")
    first = chunks[0]
    images = torch.empty(total, *first.images.shape[1:], dtype=first.images.dtype)
    grown = torch.empty(copies.pop(), *images.shape, dtype=images.dtype)
    labels = torch.empty(total, dtype=first.labels.dtype)
    styles = torch.empty(total, dtype=first.styles.dtype)
    sources = torch.empty(total, dtype=torch.long)
    for chunk in chunks:
        images[chunk.positions] = chunk.images
        grown[:, chunk.positions] = chunk.neighbours
        labels[chunk.positions] = chunk.labels
        styles[chunk.positions] = chunk.styles
        sources[chunk.positions] = chunk.sources
    copies_grown = len(grown)
    if copies_grown:
        none = torch.full((copies_grown * total,), -1, dtype=torch.long)  # grown images are new: no cached views
        return SurrogateSet(
            torch.cat([images, *grown]), labels.repeat(copies_grown + 1), styles.repeat(copies_grown + 1), torch.cat([sources, none])
        )
    return SurrogateSet(images, labels, styles, sources)


def synthesize(
    teacher: Teacher,
    targets: InversionTargets,
    config: SynthesisConfig,
    *,
    seed: int,
    on_step: StepCallback | None = None,
    bank: CachedViews | None = None,
) -> SurrogateSet:
    """The whole surrogate set in this process: every batch as one chunk, assembled as a job's chunks are."""
    batches = range(len(batch_ranges(targets.num_classes, config)))
    return assemble([synthesize_batches(teacher, targets, config, list(batches), seed=seed, on_step=on_step, bank=bank)])


def chunk_to_bytes(chunk: SurrogateChunk) -> bytes:
    """A chunk as a tensor file (torch.save of plain tensors: ``chunk_from_bytes`` loads it with weights_only)."""
    buffer = io.BytesIO()
    torch.save(
        {
            "batch_indices": torch.tensor(chunk.batch_indices, dtype=torch.long),
            "positions": chunk.positions,
            "images": chunk.images.contiguous(),
            "labels": chunk.labels,
            "styles": chunk.styles,
            "neighbours": chunk.neighbours.contiguous(),
            "sources": chunk.sources,
        },
        buffer,
    )
    return buffer.getvalue()


def chunk_from_bytes(data: bytes) -> SurrogateChunk:
    tensors = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return SurrogateChunk(
        tuple(int(b) for b in tensors["batch_indices"]),
        tensors["positions"],
        tensors["images"],
        tensors["labels"],
        tensors["styles"],
        tensors["neighbours"],
        tensors.get("sources"),  # absent from a chunk stored before sources were kept: none drawn from a bank
    )


def surrogate_sha256(surrogate: SurrogateSet) -> str:
    """A fingerprint of the surrogate set (its pixels, labels and styles, bit for bit): equal sets, equal digests."""
    digest = hashlib.sha256()
    for tensor in (surrogate.images, surrogate.labels, surrogate.styles):
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def _neighbours(generator: torch.nn.Module, scale: float, rng: torch.Generator) -> torch.Tensor:
    """Images decoded from the generator's parameters plus ``scale`` * N(0, I), which are then restored."""
    saved = [p.detach().clone() for p in generator.parameters()]
    for p in generator.parameters():
        p.add_(scale * torch.randn(p.shape, generator=rng).to(p.device, p.dtype))
    images = generator().float().cpu()
    for p, original in zip(generator.parameters(), saved, strict=True):
        p.copy_(original)
    return images


def prior_sampler(config: SynthesisConfig, image_size: int, device: torch.device) -> Callable[[int, torch.Generator], torch.Tensor]:
    """Fresh images from the generator's initial distribution (its prior), for online synthesis."""

    @torch.no_grad()
    def sample(n: int, rng: torch.Generator) -> torch.Tensor:
        return create_generator(config.generator, n, image_size, rng=rng, device=device, **dict(config.generator_options))()

    return sample


@torch.no_grad()
def teacher_probabilities(teacher: Teacher, classifier: torch.Tensor, pixels: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(N, K) zero-shot class probabilities of the teacher for pixels in [0, 1]."""
    return teacher.classify(pixels, classifier, batch_size=chunk).float().softmax(-1)


@torch.no_grad()
def cached_probabilities(teacher: Teacher, classifier: torch.Tensor, surrogate: SurrogateSet, bank: CachedViews | None) -> torch.Tensor:
    """``teacher_probabilities`` of a surrogate set's images: those drawn from ``bank`` from its cached embeddings, the
    others through the teacher."""
    sources = surrogate.sources if bank is not None else None
    banked = sources >= 0 if sources is not None else torch.zeros(len(surrogate), dtype=torch.bool)
    probabilities = torch.empty(len(surrogate), classifier.shape[0], device=classifier.device)
    if bool(banked.any()):
        assert bank is not None and sources is not None
        probabilities[banked.to(classifier.device)] = bank.logits(classifier, teacher.logit_scale, sources[banked]).float().softmax(-1)
    if not bool(banked.all()):
        rest = (~banked).nonzero(as_tuple=True)[0]
        probabilities[rest.to(classifier.device)] = teacher_probabilities(teacher, classifier, surrogate.images[rest].to(teacher.device))
    return probabilities


@torch.no_grad()
def select_starts(teacher: Teacher, classifier: torch.Tensor, generator: torch.nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """Indices of ``len(labels)`` of the generator's candidate images, one per label: for each class,
    the candidates the teacher finds most likely to be of that class (each candidate used once)."""
    return choose_per_class(teacher_probabilities(teacher, classifier, generator()), labels).cpu()


def choose_per_class(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Row indices of ``probabilities`` (candidates x classes), one per label: for each class the candidates most likely
    of it, each candidate used once."""
    taken = torch.zeros(len(probabilities), dtype=torch.bool, device=probabilities.device)
    chosen = torch.empty(len(labels), dtype=torch.long, device=probabilities.device)
    for k in labels.unique():
        slots = (labels == k).nonzero(as_tuple=True)[0]
        score = probabilities[:, k].masked_fill(taken, -1.0)
        best = score.topk(len(slots)).indices
        chosen[slots] = best
        taken[best] = True
    return chosen


def _inversion_loss(
    teacher: Teacher,
    targets: InversionTargets,
    config: SynthesisConfig,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    styles: torch.Tensor,
    rng: torch.Generator,
) -> torch.Tensor:
    tau = teacher.logit_scale
    if config.objective == "bn_inversion":
        with BatchNormStatistics(teacher.model.visual) as bn:
            embeddings = teacher.encode_image(pixels)
            bn_loss = bn.loss()
        return consistency_loss(embeddings, targets.classifier, labels, tau) + BN_WEIGHT * bn_loss + TV_WEIGHT * total_variation(pixels)
    if config.objective != "matching":
        raise ValueError(f"unknown inversion objective {config.objective!r}")

    views = random_views(pixels, config.cutouts, teacher.image_size, rng, config.augment)
    view_embeddings = teacher.encode_image(views).view(config.cutouts, pixels.shape[0], -1)
    loss = pixels.new_zeros(())
    has_text = targets.has_text[labels]
    if bool(has_text.any()):
        if config.use_styles and targets.styled.shape[1] > 0:
            text_targets = targets.styled[labels, styles.clamp(min=0)]
        else:
            text_targets = targets.text[labels]
        loss = loss + matching_loss(view_embeddings[:, has_text], text_targets[has_text].expand(config.cutouts, -1, -1))
    has_images = targets.has_images[labels]
    if bool(has_images.any()):
        image_targets = targets.prototypes[labels][has_images]
        loss = loss + matching_loss(view_embeddings[:, has_images], image_targets.expand(config.cutouts, -1, -1))
    if config.class_consistency_weight > 0:
        plain = teacher.encode_image(pixels)
        loss = loss + config.class_consistency_weight * consistency_loss(plain, targets.classifier, labels, tau)
    return loss
