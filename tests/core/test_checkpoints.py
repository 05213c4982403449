"""Resumable distillation: a run stopped after a checkpoint and resumed from it ends with the student an uninterrupted run
makes, bit for bit; a state from another run is not used; the surrogate set round-trips."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch

from core.checkpoints import DISTILLATION, Checkpoints, surrogate_from_bytes, surrogate_to_bytes
from core.distill import DistillConfig, Distiller
from core.students import create_student
from core.synthesis import SurrogateSet
from core.teachers import create_teacher
from core.teachers.base import Teacher

STEPS = 10


class Stop(Exception):
    """The worker dies: the run ends mid-way."""


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    return create_teacher("shapes-mini", device="cpu")


def _surrogate(size: int) -> SurrogateSet:
    g = torch.Generator().manual_seed(3)
    return SurrogateSet(torch.rand(48, 3, size, size, generator=g), torch.arange(48) % 2, torch.arange(48) % 4)


def _run(teacher: Teacher, method: str, store: dict[str, bytes] | None = None, *, stop_after: int | None = None,
         on_resume: Callable[[str, int, int], None] | None = None) -> torch.nn.Module:  # fmt: skip
    """A distillation from the same seeds; with ``store``, saving after every step (and resuming from what it holds)."""
    torch.manual_seed(0)
    student = create_student("tiny_cnn", 2, teacher.image_size, mean=(0.5,) * 3, std=(0.5,) * 3)
    classifier = torch.nn.functional.normalize(teacher.encode_text(["a circle", "a square"]), dim=-1)
    config = DistillConfig(method=method, steps=STEPS, epochs=4, warmup_epochs=1, batch_size=16, lr=0.05)
    checkpoints = None if store is None else Checkpoints(store.get, store.__setitem__, interval_seconds=0.0, on_resume=on_resume)

    def on_step(done: int, total: int, losses: dict[str, float]) -> None:
        if done == stop_after:
            raise Stop

    with contextlib.suppress(Stop):
        Distiller(student, teacher, classifier, config, seed=5).fit(
            _surrogate(teacher.image_size), on_step=on_step, checkpoints=checkpoints
        )
    return student


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("method", ["kd", "meta_kd"])
def test_a_resumed_distillation_ends_with_the_uninterrupted_student_bit_for_bit(teacher: Teacher, method: str) -> None:
    store: dict[str, bytes] = {}
    _run(teacher, method, store, stop_after=7)  # dies in step 7's callback: the last save holds step 6
    assert DISTILLATION in store
    resumed_from: list[int] = []
    resumed = _run(teacher, method, store, on_resume=lambda stage, step, total: resumed_from.append(step))
    assert resumed_from == [6]
    assert _same(resumed, _run(teacher, method))


def test_a_state_saved_by_another_run_is_not_resumed(teacher: Teacher) -> None:
    store: dict[str, bytes] = {}
    _run(teacher, "kd", store, stop_after=5)
    resumed_from: list[int] = []
    student = _run(teacher, "ce", store, on_resume=lambda stage, step, total: resumed_from.append(step))  # another method
    assert resumed_from == [] and _same(student, _run(teacher, "ce"))


def test_surrogate_set_round_trips() -> None:
    surrogate = _surrogate(8)
    back = surrogate_from_bytes(surrogate_to_bytes(surrogate))
    assert torch.equal(back.images, surrogate.images) and torch.equal(back.labels, surrogate.labels)
    assert torch.equal(back.styles, surrogate.styles)
