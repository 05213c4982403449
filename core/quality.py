"""How good is a student likely to be, without real data? Agreement with the teacher on images it never trained on.

A job has no labelled real images, so it cannot measure accuracy. It can measure how often the
student's top class equals the teacher's on two kinds of unseen images:
- held-out synthesized images: a fresh batch from the same synthesis, another seed;
- prior samples: images drawn from the generator's prior with no optimisation (for the decoder,
  scenes of the kind it learnt to draw), which are nearer real images than optimised ones.
Plain agreement cannot see a student that answers one class when the teacher does too: a generator
whose samples the teacher puts all in one class (fourier or pixel noise on the shapes world) gives
agreement 1.000 to a student that scores chance on real images. The class-balanced agreement
averages over the job's classes, a class the teacher finds in no sample counting 0, so such a
student scores at most 1 / classes; ``prior_sample_classes`` says how many classes the samples show.
The benchmark reports how well each tracks real test accuracy (bench/paper.py).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from core.scoring import Scores, score
from core.stored import CachedViews
from core.synthesis import InversionTargets, SynthesisConfig, cached_probabilities, prior_sampler, synthesize, teacher_probabilities
from core.teachers.base import Teacher

HELDOUT_IMAGES_PER_CLASS = 8  # synthesized images per class for the held-out estimate
PRIOR_SAMPLES = 512  # prior samples for the second estimate
HELDOUT_SEED_OFFSET = 7_919  # held-out images come from another seed than the training set's


@torch.no_grad()
def top_classes(
    student: nn.Module, teacher: Teacher, classifier: torch.Tensor, images: torch.Tensor, chunk: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's and the teacher's top class on each of ``images`` (on the CPU)."""
    teacher_top = teacher_probabilities(teacher, classifier, images.to(teacher.device)).argmax(1).cpu()
    return _student_top(student, images, chunk), teacher_top


@torch.no_grad()
def _student_top(student: nn.Module, images: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """The student's top class on each of ``images`` (any size: resized to the student's), on the CPU."""
    parameter = next(student.parameters())
    size = int(getattr(student, "image_size", images.shape[-1]))
    parts = []
    for part in images.split(chunk):
        if part.shape[-1] != size:
            part = F.interpolate(part.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        parts.append(student(part.to(parameter.device, parameter.dtype)).argmax(1).cpu())
    return torch.cat(parts)


def agreement(student: nn.Module, teacher: Teacher, classifier: torch.Tensor, images: torch.Tensor) -> float:
    """Share of ``images`` on which the student's top class is the teacher's."""
    student_top, teacher_top = top_classes(student, teacher, classifier, images)
    return float((student_top == teacher_top).float().mean())


def class_balanced_agreement(student_top: torch.Tensor, teacher_top: torch.Tensor, num_classes: int) -> float:
    """Mean over ``num_classes`` classes of the share of the images the teacher puts in a class that the student puts
    there too; a class the teacher puts no image in counts 0, since nothing shows that the student learnt it."""
    return _class_balanced(score(student_top.numpy(), teacher_top.numpy(), num_classes))


def _class_balanced(scores: Scores) -> float:
    """``scores``' per-class accuracy averaged over every class, a class without images counting 0."""
    return sum(share for share in scores.per_class if share is not None) / len(scores.per_class)


def estimate_quality(
    student: nn.Module,
    teacher: Teacher,
    targets: InversionTargets,
    synthesis: SynthesisConfig,
    *,
    seed: int,
    bank: CachedViews | None = None,
) -> dict[str, float | int]:
    """The student's agreement with the teacher on held-out synthesized images and on prior samples. ``bank``: the job's
    bank (a sample bank, a pool's images): both come from it, with the teacher's cached embeddings of them."""
    held_out_config = replace(synthesis, images_per_class=HELDOUT_IMAGES_PER_CLASS)
    held_out = synthesize(teacher, targets, held_out_config, seed=seed + HELDOUT_SEED_OFFSET, bank=bank)
    rng = torch.Generator().manual_seed(seed + HELDOUT_SEED_OFFSET)
    classifier = targets.classifier
    if bank is not None:
        index = torch.randint(len(bank), (PRIOR_SAMPLES,), generator=rng)
        samples, teacher_top = bank.pixels(index), bank.logits(classifier, teacher.logit_scale, index).argmax(1).cpu()
        student_top = _student_top(student, samples)
    else:
        samples = prior_sampler(synthesis, teacher.image_size, teacher.device)(PRIOR_SAMPLES, rng).float().cpu()
        # The teacher's top classes as labels: the student's accuracy and per-class accuracy against them are agreements.
        student_top, teacher_top = top_classes(student, teacher, classifier, samples)
    on_prior = score(student_top.numpy(), teacher_top.numpy(), classifier.shape[0])
    held_out_teacher = cached_probabilities(teacher, classifier, held_out, bank).argmax(1).cpu()
    held_out_agreement = float((_student_top(student, held_out.images) == held_out_teacher).float().mean())
    return {
        "agreement_heldout_synthesized": round(held_out_agreement, 4),
        "heldout_synthesized_images": len(held_out),
        "agreement_prior_samples": round(on_prior.accuracy, 4),
        "agreement_prior_samples_balanced": round(_class_balanced(on_prior), 4),
        "prior_sample_classes": sum(share is not None for share in on_prior.per_class),
        "prior_samples": PRIOR_SAMPLES,
    }


def quality_warnings(quality: dict[str, float | int], num_classes: int) -> list[str]:
    """What a user should know before trusting the estimates: prior samples that show only some of the classes."""
    seen = int(quality.get("prior_sample_classes", num_classes))
    if seen >= num_classes:
        return []
    balanced = quality.get("agreement_prior_samples_balanced")
    return [
        f"the teacher finds only {seen} of the {num_classes} classes among {quality.get('prior_samples')} prior samples: "
        f"the agreement on them says nothing of the others (class-balanced agreement {balanced}); "
        "evaluate the student on labelled images before using it"
    ]
