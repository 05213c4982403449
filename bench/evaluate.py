"""Zero-shot evaluation of a teacher on a task (shapes-world renders or photos)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.tasks import AnyTask, Split, get_task
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
    task: AnyTask | str,
    *,
    split: Split = "test",
    images: int | None = DEFAULT_EVAL_IMAGES,
    template: str = DEFAULT_TEMPLATE,
) -> ZeroShotResult:
    """``images`` balanced images of ``split``; None: all a photo task's split holds (DEFAULT_EVAL_IMAGES renders otherwise)."""
    task = get_task(task) if isinstance(task, str) else task
    if images is None:
        images = task.available(split) or DEFAULT_EVAL_IMAGES
    pixels, labels = task.render(split, images, size=teacher.image_size)
    weights = teacher.class_embeddings(task.class_texts, template)
    predictions = teacher.classify(pixels, weights).argmax(1).cpu()
    correct = predictions == labels
    per_class = {text: float(correct[labels == k].float().mean()) for k, text in enumerate(task.class_texts)}
    return ZeroShotResult(teacher.name, task.name, split, images, float(correct.float().mean()), per_class)
