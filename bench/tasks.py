"""Classification tasks, in a registry: procedural shapes-world tasks and tasks on a fixed photo set.

A shapes-world task (:class:`Task`) is a list of classes; a class fixes a shape, a colour or both, and
every other factor is drawn at random. Validation, test and example images come from disjoint seeds
(checked in the tests), and task images never contain the distractor glyph.

A photo task (:class:`PhotoTask`, the fashion world of ``bench.fashion``) draws labelled photos from a
fixed set whose splits are disjoint. Both kinds share the contract that callers use: ``name``,
``classes`` (each with ``text``), ``class_texts``, ``render(split, n, size=...)`` (balanced labelled
images), ``examples(per_class, size=...)`` and ``available(split)``; only shapes tasks have ``sample``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from bench import fashion
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

    def available(self, split: Split) -> int | None:
        """How many distinct images ``split`` can give: no limit for rendered worlds."""
        return None

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


@dataclass(frozen=True)
class PhotoClass:
    text: str  # the class text a user would type; zero-shot prompts embed it
    label: int  # the photo set's own label for this class


@dataclass(frozen=True)
class PhotoTask:
    """A task on a fixed photo set: ``render`` draws balanced labelled photos of a split, without repeats."""

    name: str
    classes: tuple[PhotoClass, ...]
    description: str
    # The photo set's splits (train, val, test, examples), loaded on first use so that listing tasks needs no data.
    photos: Callable[[str], fashion.PhotoSplit] = field(compare=False, repr=False)

    @property
    def class_texts(self) -> list[str]:
        return [c.text for c in self.classes]

    def split_seed(self, split: Split) -> int:
        """A seed per (task, split): which photos ``render`` draws, and in what order."""
        return zlib.crc32(f"clipforge/{self.name}/{split}".encode())

    def _members(self, split: Split) -> list[torch.Tensor]:
        labels = self.photos(split).labels
        return [torch.nonzero(labels == c.label).flatten() for c in self.classes]

    def available(self, split: Split) -> int:
        """The most balanced photos ``split`` can give: the classes times the smallest class's count."""
        return len(self.classes) * min(len(m) for m in self._members(split))

    def render(self, split: Split, n: int, *, size: int = DEFAULT_IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` labelled photos of ``split`` with balanced classes: (images (n,3,S,S) in [0,1], labels (n,)).

        Deterministic per (task, split, n); a ValueError when a class has fewer photos than its share."""
        photos = self.photos(split)
        g = torch.Generator().manual_seed(self.split_seed(split))
        labels = torch.arange(n) % len(self.classes)
        labels = labels[torch.randperm(n, generator=g)]
        index = torch.empty(n, dtype=torch.long)
        for k, members in enumerate(self._members(split)):
            slots = torch.nonzero(labels == k).flatten()
            if len(slots) > len(members):
                raise ValueError(
                    f"task {self.name}: the {split} split holds {len(members)} photos of {self.classes[k].text!r}, "
                    f"{len(slots)} asked (at most {self.available(split)} images in all)"
                )
            index[slots] = members[torch.randperm(len(members), generator=g)[: len(slots)]]
        return fashion.to_pixels(photos.images[index], size), labels

    def examples(self, per_class: int, *, size: int = DEFAULT_IMAGE_SIZE) -> dict[str, torch.Tensor]:
        """A few example photos per class (for image prompts), from the `examples` split."""
        images, labels = self.render("examples", per_class * len(self.classes), size=size)
        return {c.text: images[labels == k] for k, c in enumerate(self.classes)}


AnyTask = Task | PhotoTask  # what the registry holds; callers use only the contract in the module doc

TASKS: Registry[AnyTask] = Registry("task")


def register_task(fn: Callable[[], AnyTask]) -> Callable[[], AnyTask]:
    return TASKS.register(fn.__name__.removeprefix("task_"))(fn)


def list_tasks() -> list[str]:
    return TASKS.names()


SUBSET_PREFIX = "shapes:"  # "shapes:star,circle,ring": those shapes of shape8, in that order


def get_task(name: str) -> AnyTask:
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


def fashion_photos(split: str) -> fashion.PhotoSplit:
    """A split of Fashion-MNIST, found as ``bench.fashion`` says (``$CLIPFORGE_FASHION_DIR`` for stand-ins)."""
    return fashion.load_fashion().split(split)


def fashion_task(name: str, class_texts: tuple[str, ...], description: str) -> PhotoTask:
    classes = tuple(PhotoClass(text, fashion.FASHION_CLASSES.index(text)) for text in class_texts)
    return PhotoTask(name, classes, description, fashion_photos)


# Two subsets: footwear and bags (shape-distinct, easy), and upper-body garments (the hard, look-alike classes).
FASHION_FOOTWEAR = ("sandal", "sneaker", "ankle boot", "bag")
FASHION_TOPS = ("t-shirt", "pullover", "dress", "coat", "shirt")


@TASKS.register("fashion10")
def task_fashion10() -> PhotoTask:
    return fashion_task("fashion10", fashion.FASHION_CLASSES, "Fashion-MNIST photos, all 10 classes")


@TASKS.register("fashion-footwear")
def task_fashion_footwear() -> PhotoTask:
    return fashion_task("fashion-footwear", FASHION_FOOTWEAR, "Fashion-MNIST photos: footwear and bags (4 classes)")


@TASKS.register("fashion-tops")
def task_fashion_tops() -> PhotoTask:
    return fashion_task("fashion-tops", FASHION_TOPS, "Fashion-MNIST photos: upper-body garments (5 look-alike classes)")
