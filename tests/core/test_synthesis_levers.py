"""Issue 10's engine levers: teacher-chosen starts, the prior pull, online fresh images, quality estimates."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from core.distill import DistillConfig, Distiller
from core.generators import create_generator
from core.quality import agreement, class_balanced_agreement, quality_warnings
from core.students import create_student_for
from core.synthesis import (
    ClassPrompts,
    SurrogateSet,
    SynthesisConfig,
    build_targets,
    prior_sampler,
    select_starts,
    synthesize,
    teacher_probabilities,
)

CLASSES = ["circle", "star", "ring"]


@pytest.fixture(scope="module")
def targets(shapes_teacher):
    return build_targets(shapes_teacher, [ClassPrompts(c) for c in CLASSES], [])


def test_teacher_chosen_starts_are_more_class_like_and_each_candidate_is_used_once(shapes_teacher, targets) -> None:
    labels = torch.arange(12) % 3
    generator = create_generator("decoder", 48, 32, rng=torch.Generator().manual_seed(0))
    candidates = generator().detach()
    chosen = select_starts(shapes_teacher, targets.classifier, generator, labels)
    assert chosen.shape == (12,) and len(chosen.unique()) == 12
    probabilities = teacher_probabilities(shapes_teacher, targets.classifier, candidates)
    picked = probabilities[chosen, labels].mean()
    first = probabilities[torch.arange(12), labels].mean()  # what the first 12 candidates would have given
    assert picked > first + 0.1
    generator.keep(chosen)
    assert torch.allclose(generator(), candidates[chosen], atol=1e-5)


def test_synthesis_with_candidates_keeps_balanced_labels(shapes_teacher, targets) -> None:
    config = SynthesisConfig(
        images_per_class=4, steps=2, cutouts=1, batch_size=12, generator="decoder", init_candidates=3, prior_weight=0.5
    )
    data = synthesize(shapes_teacher, targets, config, seed=0)
    assert data.images.shape == (12, 3, 32, 32) and torch.equal(torch.bincount(data.labels), torch.tensor([4, 4, 4]))
    again = synthesize(shapes_teacher, targets, config, seed=0)
    assert torch.equal(data.images, again.images)  # the choice of starts is seeded too


def test_zero_steps_keeps_the_chosen_prior_samples(shapes_teacher, targets) -> None:
    config = SynthesisConfig(images_per_class=2, steps=0, cutouts=1, batch_size=6, generator="decoder", init_candidates=2)
    data = synthesize(shapes_teacher, targets, config, seed=1)
    assert data.images.shape == (6, 3, 32, 32) and bool(((data.images >= 0) & (data.images <= 1)).all())


def test_fresh_images_replace_part_of_each_batch_and_take_the_teachers_label(shapes_teacher, targets) -> None:
    calls: list[int] = []
    base = prior_sampler(SynthesisConfig(generator="decoder"), 32, shapes_teacher.device)

    def sampler(n: int, rng: torch.Generator) -> torch.Tensor:
        calls.append(n)
        return base(n, rng)

    data = SurrogateSet(torch.rand(16, 3, 32, 32), torch.zeros(16, dtype=torch.long), torch.full((16,), -1))
    student = create_student_for(shapes_teacher, "tiny_cnn", 3)
    config = DistillConfig(method="ce", steps=3, batch_size=8, fresh_share=0.5)
    distiller = Distiller(student, shapes_teacher, targets.classifier, config, seed=0, sampler=sampler)
    views, logits, labels = distiller._sample(torch.arange(16), data, fresh_share=0.5)
    assert calls == [4] and views.shape[0] == 8
    assert torch.equal(labels[:4], torch.zeros(4, dtype=torch.long))
    assert torch.equal(labels[4:], logits[4:].argmax(1))  # fresh images: the teacher's class
    distiller.fit(data)
    assert len(calls) == 4  # one more per step
    with pytest.raises(ValueError, match="sampler"):
        Distiller(student, shapes_teacher, targets.classifier, config, seed=0)


class _TeacherAsStudent(nn.Module):
    def __init__(self, teacher, classifier: torch.Tensor) -> None:
        super().__init__()
        self.teacher, self.classifier = teacher, classifier
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher.encode_image(x) @ self.classifier.T


def test_agreement_is_one_for_the_teacher_itself_and_the_top_class_share_for_a_constant(shapes_teacher, targets) -> None:
    images = create_generator("decoder", 64, 32, rng=torch.Generator().manual_seed(3))().detach()
    assert agreement(_TeacherAsStudent(shapes_teacher, targets.classifier), shapes_teacher, targets.classifier, images) == 1.0
    constant = nn.Linear(3 * 32 * 32, 3)
    nn.init.zeros_(constant.weight)
    with torch.no_grad():
        constant.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    flat = nn.Sequential(nn.Flatten(), constant)
    share = float((teacher_probabilities(shapes_teacher, targets.classifier, images).argmax(1) == 2).float().mean())
    assert agreement(flat, shapes_teacher, targets.classifier, images) == pytest.approx(share)


def test_class_balanced_agreement_sees_a_student_that_answers_the_one_class_the_teacher_finds() -> None:
    teacher_top = torch.full((40,), 1)
    # Plain agreement is 1 here; the balanced one counts the three classes no sample shows as 0.
    assert float((teacher_top == teacher_top).float().mean()) == 1.0
    assert class_balanced_agreement(teacher_top, teacher_top, num_classes=4) == pytest.approx(0.25)
    balanced = torch.arange(4).repeat(10)
    assert class_balanced_agreement(balanced, balanced, num_classes=4) == 1.0
    # A student right on every image of class 0 and on none of the others: one class of four.
    wrong = torch.where(balanced == 0, balanced, (balanced + 1) % 4)
    assert class_balanced_agreement(wrong, balanced, num_classes=4) == pytest.approx(0.25)
    # Classes weigh the same however many images the teacher puts in each: 30 right of class 0, 0 of 10 of class 1.
    skewed_teacher = torch.cat([torch.zeros(30, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    assert class_balanced_agreement(torch.zeros(40, dtype=torch.long), skewed_teacher, num_classes=2) == pytest.approx(0.5)


def test_a_job_warns_when_its_prior_samples_show_only_some_classes() -> None:
    collapsed = {"agreement_prior_samples": 1.0, "agreement_prior_samples_balanced": 0.125, "prior_sample_classes": 1, "prior_samples": 512}
    [warning] = quality_warnings(collapsed, num_classes=8)
    assert "only 1 of the 8 classes" in warning and "0.125" in warning
    assert quality_warnings({**collapsed, "prior_sample_classes": 8}, num_classes=8) == []


def test_pool_growth_adds_labelled_neighbours_near_each_image(shapes_teacher, targets) -> None:
    base = SynthesisConfig(images_per_class=2, steps=1, cutouts=1, batch_size=6, generator="decoder")
    plain = synthesize(shapes_teacher, targets, base, seed=2)
    grown = synthesize(shapes_teacher, targets, replace(base, neighbours=2, neighbour_scale=0.3), seed=2)
    assert len(grown) == 18 and torch.equal(grown.labels, plain.labels.repeat(3))
    assert torch.equal(grown.images[:6], plain.images)  # the optimised images themselves are unchanged
    near = (grown.images[6:12] - plain.images).abs().mean()
    far = (plain.images[torch.tensor([1, 2, 3, 4, 5, 0])] - plain.images).abs().mean()
    assert 0 < near < far
