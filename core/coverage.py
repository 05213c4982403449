"""How well a generator's prior covers each of a job's classes, before any inversion step: the teacher's confidence in the
prior samples that look most like each class. A class the prior's images never showed (a user's own class, beyond what
the decoder was trained on) gets only samples that look like something else, and low confidence; the synthesis then
spends inversion steps on that class's images (core.synthesis: ``thin_classes``), and the job reports the figure.

Deterministic per (seed, teacher, prior): every process that prepares the job finds the same thin classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.stored import EMBED_BATCH, CachedViews, StepCallback
from core.synthesis import SEED_STRIDE, SurrogateSet, SynthesisConfig, cached_probabilities, prior_sampler, teacher_probabilities
from core.teachers.base import Teacher

COVERAGE_TOP_SHARE = 1 / 16  # the share of the samples, the best per class, whose confidence is averaged (64 of 1,024)
STAYS_THIN = 0.5  # a class whose surrogate images the teacher gives less than this on average stays thin (a warning)
COVERAGE_STREAM = 999_983  # offset of the coverage draw's seed from the synthesis batches' (a prime, never a batch index)


@dataclass(frozen=True)
class Coverage:
    prior: list[float]  # per class: mean teacher probability of its most class-like prior samples (COVERAGE_TOP_SHARE)
    threshold: float  # below it a class is thin
    thin: tuple[int, ...]  # the thin classes' indices

    def as_dict(self, class_names: list[str]) -> dict[str, dict[str, float | bool]]:
        return {name: {"prior": round(self.prior[k], 4), "thin": k in self.thin} for k, name in enumerate(class_names)}

    def to_json(self) -> dict[str, object]:
        """Exactly what ``from_json`` restores (a split job measures it once and hands it to its chunks)."""
        return {"prior": list(self.prior), "threshold": self.threshold, "thin": list(self.thin)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Coverage:
        prior, thin = data["prior"], data["thin"]
        if not isinstance(prior, list) or not isinstance(thin, list):
            raise ValueError("a coverage record holds lists 'prior' and 'thin'")
        return cls([float(p) for p in prior], float(data["threshold"]), tuple(int(k) for k in thin))


@torch.no_grad()
def prior_coverage(
    teacher: Teacher,
    classifier: torch.Tensor,
    config: SynthesisConfig,
    *,
    seed: int,
    threshold: float,
    bank: CachedViews | None = None,
    on_step: StepCallback | None = None,
) -> Coverage:
    """``bank``: the prior's samples are the bank's (a pool's images), scored from their cached embeddings.
    ``on_step(done, total)`` after each EMBED_BATCH of samples the teacher scored (a slow teacher's preparing reports)."""
    rng = torch.Generator().manual_seed(seed * SEED_STRIDE + COVERAGE_STREAM)
    if bank is not None:
        index = torch.randint(len(bank), (config.coverage_samples,), generator=rng)
        probabilities = bank.logits(classifier, teacher.logit_scale, index).float().softmax(-1)
    else:
        samples = prior_sampler(config, teacher.image_size, teacher.device)(config.coverage_samples, rng)
        parts = []
        for chunk in samples.split(EMBED_BATCH):
            parts.append(teacher_probabilities(teacher, classifier, chunk))
            if on_step is not None:
                on_step(sum(len(p) for p in parts), len(samples))
        probabilities = torch.cat(parts)  # (M, K)
    top = max(1, round(len(probabilities) * COVERAGE_TOP_SHARE))
    best = probabilities.topk(top, dim=0).values.mean(0)
    prior = [float(p) for p in best.cpu()]
    return Coverage(prior, threshold, tuple(k for k, p in enumerate(prior) if p < threshold))


@torch.no_grad()
def surrogate_coverage(
    teacher: Teacher, classifier: torch.Tensor, surrogate: SurrogateSet, *, bank: CachedViews | None = None
) -> list[float]:
    """Per class: the teacher's mean probability of the class on the surrogate images made for it (after inversion)."""
    probabilities = cached_probabilities(teacher, classifier, surrogate, bank).cpu()
    labels = surrogate.labels
    own = probabilities[torch.arange(len(labels)), labels]
    return [float(own[labels == k].mean()) if bool((labels == k).any()) else 0.0 for k in range(classifier.shape[0])]


def coverage_warnings(coverage: dict[str, dict[str, float | bool]], threshold: float = 0.0) -> list[str]:
    """A warning for each class whose surrogate images still do not look like it to the teacher (a class that stays
    thin): its student accuracy is the least to be trusted."""
    return [
        f"class {name!r} stays thin: the teacher gives its surrogate images {figures['surrogate']:.2f} on average "
        f"(its best prior samples {figures['prior']:.2f}); evaluate the student on labelled images of it"
        for name, figures in coverage.items()
        if float(figures.get("surrogate", 1.0)) < max(threshold, STAYS_THIN)
    ]
