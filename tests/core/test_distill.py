"""Distillation helpers: style splits for meta-KD and mixup views."""

from __future__ import annotations

import torch

from core.distill import DistillConfig, Distiller, split_styles
from core.students import create_student
from core.teachers import create_teacher


def distiller(mixup: float) -> Distiller:
    teacher = create_teacher("shapes-mini", device="cpu")
    student = create_student("tiny_cnn", 2, teacher.image_size, mean=(0.5,) * 3, std=(0.5,) * 3)
    return Distiller(student, teacher, torch.eye(2, teacher.encode_text(["a"]).shape[-1]), DistillConfig(mixup=mixup), seed=0)


def test_style_split_is_disjoint_and_complete() -> None:
    styles = torch.arange(40) % 8
    train, test = split_styles(styles, 0.5, torch.Generator().manual_seed(0))
    assert set(styles[train].tolist()).isdisjoint(styles[test].tolist())
    assert sorted(torch.cat([train, test]).tolist()) == list(range(40))
    assert len(styles[train].unique()) == 4


def test_mixup_makes_convex_combinations_and_keeps_the_larger_components_label() -> None:
    d = distiller(mixup=1.0)
    views = torch.stack([torch.full((3, 4, 4), float(i)) for i in range(16)])
    labels = torch.arange(16)
    mixed, mixed_labels = d._mix(views, labels)
    values = mixed[:, 0, 0, 0]
    # Every image is now w * i + (1 - w) * j for some partner j: its constant value lies in [0, 15].
    assert bool(((values >= 0) & (values <= 15)).all()) and not torch.equal(mixed, views)
    assert bool((mixed == mixed[:, :1, :1, :1]).all())  # the whole image is mixed with one weight
    # The hard label is the component that weighs more, so |value - label| <= half the distance to the partner.
    assert bool(((values - mixed_labels.float()).abs() <= 7.5 + 1e-6).all())


def test_without_mixup_views_are_untouched() -> None:
    d = distiller(mixup=0.0)
    views, labels = torch.rand(8, 3, 4, 4), torch.arange(8)
    mixed, mixed_labels = d._mix(views, labels)
    assert torch.equal(mixed, views) and torch.equal(mixed_labels, labels)
