"""Teacher facts for resolving specs in tests without loading a teacher."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BundledTeacherFacts:
    """What resolving needs of a teacher (core.spec.TeacherFacts): the bundled default, with its paired decoder."""

    name: str = "shapes-mini"
    paired_decoder: str | None = "shapes-vae"


SHAPES_MINI = BundledTeacherFacts()
