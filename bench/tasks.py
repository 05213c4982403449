"""Shapes-world classification tasks, in a registry.

Each task is a list of classes; a class fixes a shape, a colour or both, and every other
factor is drawn at random. Validation, test and example images come from disjoint seeds
(checked in the tests), and task images never contain the distractor glyph.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from bench.world import COLOUR_NAMES, COLOURS, DEFAULT_IMAGE_SIZE, SHAPES, Scenes, render, scenes_for
from core.registry import Registry

# train: real images for the reference rows of the benchmark (real + KD, supervised), never for the method.
Split = Literal["train", "val", "test", "examples"]
SPLITS: tuple[Split, ...] = ("train", "val", "test", "examples")


@dataclass(frozen=True)
class TaskClass:
    text: str  # the class text a user would type; zero-shot prompts embed it
    shape: str | None = None  # the shape every image of this class shows; None: any
    colour: str | None = None  # the colour every image of this class shows; None: any


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[TaskClass, ...]
    description: str

    @property
    def class_texts(self) -> list[str]:
        return [c.text for c in self.classes]

    def split_seed(self, split: Split) -> int:
        """A seed per (task, split); the splits never share a seed, so never an image."""
        return zlib.crc32(f"clipforge/{self.name}/{split}".encode())

    def render(self, split: Split, n: int, *, size: int = DEFAULT_IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` labelled images of ``split`` with balanced classes: (images (n,3,S,S) in [0,1], labels (n,))."""
        scenes, labels, g = self.sample(split, n)
        return render(scenes, size, g), labels

    def sample(self, split: Split, n: int) -> tuple[Scenes, torch.Tensor, torch.Generator]:
        """The scenes behind ``render``, their labels, and the generator that renders them."""
        g = torch.Generator().manual_seed(self.split_seed(split))
        labels = torch.arange(n) % len(self.classes)
        labels = labels[torch.randperm(n, generator=g)]
        any_shape = torch.randint(len(SHAPES), (n,), generator=g)
        any_colour = torch.randint(len(COLOURS), (n,), generator=g)
        fixed_shape = torch.tensor([-1 if c.shape is None else SHAPES.index(c.shape) for c in self.classes])[labels]
        fixed_colour = torch.tensor([-1 if c.colour is None else COLOUR_NAMES.index(c.colour) for c in self.classes])[labels]
        shape = torch.where(fixed_shape >= 0, fixed_shape, any_shape)
        colour = torch.where(fixed_colour >= 0, fixed_colour, any_colour)
        return scenes_for(shape, colour, g, distractor_prob=0.0), labels, g

    def examples(self, per_class: int, *, size: int = DEFAULT_IMAGE_SIZE) -> dict[str, torch.Tensor]:
        """A few example images per class (for image prompts), from the `examples` split."""
        images, labels = self.render("examples", per_class * len(self.classes), size=size)
        return {c.text: images[labels == k] for k, c in enumerate(self.classes)}


TASKS: Registry[Task] = Registry("task")


def register_task(fn: Callable[[], Task]) -> Callable[[], Task]:
    return TASKS.register(fn.__name__.removeprefix("task_"))(fn)


def list_tasks() -> list[str]:
    return TASKS.names()


SUBSET_PREFIX = "shapes:"  # "shapes:star,circle,ring": those shapes of shape8, in that order


def get_task(name: str) -> Task:
    """A registered task, or ``shapes:<shape>,<shape>,...``: a subset of shape8's classes in the order given
    (for checking that settings chosen on shape8 are not tuned to its class list)."""
    if name.startswith(SUBSET_PREFIX):
        names = [n.strip() for n in name.removeprefix(SUBSET_PREFIX).split(",")]
        unknown = [n for n in names if n not in SHAPES]
        if unknown or len(set(names)) != len(names) or len(names) < 2:
            raise ValueError(f"task {name!r}: give two or more distinct shapes of {', '.join(SHAPES)}")
        return Task(name, tuple(TaskClass(n, shape=n) for n in names), f"{len(names)} of the 8 shapes, any colour")
    return TASKS.create(name)


@register_task
def task_shape8() -> Task:
    return Task("shape8", tuple(TaskClass(s, shape=s) for s in SHAPES), "8-way shape, any colour")


@register_task
def task_color8() -> Task:
    # "red shape" reads naturally in "a photo of a {class}." and occurs in teacher captions.
    return Task("color8", tuple(TaskClass(f"{c} shape", colour=c) for c in COLOUR_NAMES), "8-way colour, any shape")


@register_task
def task_combo() -> Task:
    # Each colour and each shape occurs in two classes: only colour bound to shape separates them.
    pairs = [
        ("red", "circle"),
        ("red", "star"),
        ("blue", "circle"),
        ("blue", "star"),
        ("green", "square"),
        ("green", "triangle"),
        ("yellow", "square"),
        ("yellow", "triangle"),
    ]
    return Task("combo", tuple(TaskClass(f"{c} {s}", shape=s, colour=c) for c, s in pairs), "colour-shape pairs")


# Names no teacher caption ever uses; the teacher misreads them, image prompts rescue them.
AMBIGUOUS_NAMES: dict[str, str] = {
    "circle": "coin",
    "square": "tile",
    "triangle": "pyramid",
    "star": "asterisk",
    "hexagon": "honeycomb",
    "cross": "plus sign",
    "heart": "valentine",
    "ring": "donut",
}


@register_task
def task_ambiguous() -> Task:
    return Task(
        "ambiguous",
        tuple(TaskClass(AMBIGUOUS_NAMES[s], shape=s) for s in SHAPES),
        "8 shapes named by words absent from teacher captions",
    )
