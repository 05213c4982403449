"""A submitted spec as the service's workers will run it, known without torch: the API's estimate resolves it here with
the same function the worker uses (core.spec.resolve), given the catalogue's facts of the same teacher."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.estimate import estimate_seconds
from core.spec import CustomizeSpec, ResolvedSpec, device_type, requested_device, resolve
from service.catalog import TeacherEntry, find_teacher
from service.settings import Settings


def resolve_submitted(spec: Mapping[str, Any] | CustomizeSpec, settings: Settings) -> ResolvedSpec:
    """``spec`` resolved for where this service runs it: the spec's device, else the workers' (``settings.device``;
    with "auto" the API cannot see the workers' hardware and assumes the CPU), the teacher's paired decoder from the
    catalogue. A worker with the same device resolves the job to the same spec (tests/service/test_specs.py)."""
    parsed = spec if isinstance(spec, CustomizeSpec) else CustomizeSpec.model_validate(spec)
    name = parsed.teacher or settings.default_teacher
    teacher = find_teacher(name, settings.cache_dir, settings.extra_teachers) or TeacherEntry(name, "unknown", None, "")
    return resolve(parsed, device_type(requested_device(parsed.device, settings.device)), teacher)


def estimated_duration(spec: Mapping[str, Any] | CustomizeSpec, settings: Settings) -> float | None:
    """The job's duration in seconds on a worker of the service's device (core.estimate's reference rates); None
    without a reference (a GPU budget, a teacher or student without measured costs)."""
    return estimate_seconds(resolve_submitted(spec, settings).model_dump(mode="json"))
