"""Zero-shot evaluation of a teacher on shapes-world tasks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.tasks import Split, Task, get_task
from core.teachers.base import DEFAULT_TEMPLATE, Teacher

DEFAULT_EVAL_IMAGES = 2000


@dataclass(frozen=True)
class ZeroShotResult:
    teacher: str
    task: str
    split: str
    images: int
    accuracy: float
    per_class: dict[str, float]


@torch.no_grad()
def zero_shot(
    teacher: Teacher,
    task: Task | str,
    *,
    split: Split = "test",
    images: int = DEFAULT_EVAL_IMAGES,
    template: str = DEFAULT_TEMPLATE,
) -> ZeroShotResult:
    task = get_task(task) if isinstance(task, str) else task
    pixels, labels = task.render(split, images, size=teacher.image_size)
    weights = teacher.class_embeddings(task.class_texts, template)
    predictions = teacher.classify(pixels, weights).argmax(1).cpu()
    correct = predictions == labels
    per_class = {text: float(correct[labels == k].float().mean()) for k, text in enumerate(task.class_texts)}
    return ZeroShotResult(teacher.name, task.name, split, images, float(correct.float().mean()), per_class)
