"""How good is a student likely to be, without real data? Agreement with the teacher on images it never trained on.

A job has no labelled real images, so it cannot measure accuracy. It can measure how often the
student's top class equals the teacher's on two kinds of unseen images:
- held-out synthesized images: a fresh batch from the same synthesis, another seed;
- prior samples: images drawn from the generator's prior with no optimisation (for the decoder,
  scenes of the kind it learnt to draw), which are nearer real images than optimised ones.
The benchmark reports how well each tracks real test accuracy (bench/paper.py).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from core.synthesis import InversionTargets, SynthesisConfig, prior_sampler, synthesize, teacher_probabilities
from core.teachers.base import Teacher

HELDOUT_IMAGES_PER_CLASS = 8  # synthesized images per class for the held-out estimate
PRIOR_SAMPLES = 512  # prior samples for the second estimate
HELDOUT_SEED_OFFSET = 7_919  # held-out images come from another seed than the training set's


@torch.no_grad()
def agreement(student: nn.Module, teacher: Teacher, classifier: torch.Tensor, images: torch.Tensor, chunk: int = 512) -> float:
    """Share of ``images`` on which the student's top class is the teacher's."""
    teacher_top = teacher_probabilities(teacher, classifier, images.to(teacher.device)).argmax(1).cpu()
    parameter = next(student.parameters())
    student_top = torch.cat([student(part.to(parameter.device, parameter.dtype)).argmax(1).cpu() for part in images.split(chunk)])
    return float((student_top == teacher_top).float().mean())


def estimate_quality(
    student: nn.Module, teacher: Teacher, targets: InversionTargets, synthesis: SynthesisConfig, *, seed: int
) -> dict[str, float | int]:
    """The student's agreement with the teacher on held-out synthesized images and on prior samples."""
    held_out_config = replace(synthesis, images_per_class=HELDOUT_IMAGES_PER_CLASS)
    held_out = synthesize(teacher, targets, held_out_config, seed=seed + HELDOUT_SEED_OFFSET)
    rng = torch.Generator().manual_seed(seed + HELDOUT_SEED_OFFSET)
    samples = prior_sampler(synthesis, teacher.image_size, teacher.device)(PRIOR_SAMPLES, rng).float().cpu()
    return {
        "agreement_heldout_synthesized": round(agreement(student, teacher, targets.classifier, held_out.images), 4),
        "heldout_synthesized_images": len(held_out),
        "agreement_prior_samples": round(agreement(student, teacher, targets.classifier, samples), 4),
        "prior_samples": PRIOR_SAMPLES,
    }
