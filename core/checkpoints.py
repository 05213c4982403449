"""Resumable runs: a job's surrogate set and its distillation's state, saved as it goes, so that a later attempt (its
worker died) resumes where the last save left it instead of starting again.

Where the bytes go is the caller's (a service's storage, a folder): ``Checkpoints`` holds its two callbacks, as progress
and cancellation arrive as callbacks. What is saved is everything the run's outcome depends on (the student's weights
and buffers, the optimiser's and the schedule's state, the random generator's state and the step), so that a resumed
run ends with the student an uninterrupted one makes, bit for bit on the same machine.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from core.synthesis import SurrogateSet

SURROGATE = "surrogate.pt"  # the surrogate set, saved once synthesis is done
DISTILLATION = "distillation.pt"  # the latest distillation state


@dataclass(frozen=True)
class Checkpoints:
    load: Callable[[str], bytes | None]  # the bytes last saved under a name, or None
    save: Callable[[str, bytes], None]  # keep bytes under a name, replacing the previous ones (whole or not at all)
    interval_seconds: float = 10.0  # distillation time between two saves: the most work a lost worker costs
    on_resume: Callable[[str, int, int], None] | None = None  # told (stage, step, of steps) when a run resumes


def to_bytes(tensors: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes) -> dict[str, Any]:
    """Plain tensors and numbers only (weights_only): a checkpoint cannot run code when loaded."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def surrogate_to_bytes(surrogate: SurrogateSet) -> bytes:
    tensors = {"images": surrogate.images.contiguous(), "labels": surrogate.labels, "styles": surrogate.styles}
    return to_bytes({**tensors, "sources": surrogate.sources})


def surrogate_from_bytes(data: bytes) -> SurrogateSet:
    tensors = from_bytes(data)
    return SurrogateSet(tensors["images"], tensors["labels"], tensors["styles"], tensors.get("sources"))
