"""Teachers are loaded once per worker process and kept: a job pays for its teacher only the first time."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from core.teachers import Teacher, create_teacher

_cache: dict[tuple[str, str], Teacher] = {}
_lock = threading.Lock()


def get_teacher(name: str, device: str, cache_dir: Path | None) -> Teacher:
    key = (name, device)
    with _lock:
        if key not in _cache:
            teacher = create_teacher(name, device=device, cache_dir=cache_dir, download=False)
            _warm_paired_decoder(teacher)
            _cache[key] = teacher
        return _cache[key]


def _warm_paired_decoder(teacher: Teacher) -> None:
    """Load the teacher's paired decoder into core's per-process cache now, with the teacher, so that no job pays for it.

    (It also kept the first job of a process on the same seeded stream as later ones while decoder construction drew
    from torch's RNG; core no longer does that, and tests/e2e checks that two jobs with one seed agree.)
    """
    if getattr(teacher, "paired_decoder", None):
        from core.generators.decoder import load_decoder

        # A missing or broken decoder is reported by the job that needs it, with its own error code.
        with contextlib.suppress(Exception):
            load_decoder(teacher.paired_decoder)


def cached_teachers() -> list[tuple[str, str]]:
    return list(_cache)
