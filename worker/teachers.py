"""Teachers are loaded once per worker process and kept: a job pays for its teacher only the first time."""

from __future__ import annotations

import threading
from pathlib import Path

from core.teachers import Teacher, create_teacher

_cache: dict[tuple[str, str], Teacher] = {}
_lock = threading.Lock()


def get_teacher(name: str, device: str, cache_dir: Path | None) -> Teacher:
    key = (name, device)
    with _lock:
        if key not in _cache:
            _cache[key] = create_teacher(name, device=device, cache_dir=cache_dir, download=False)
        return _cache[key]


def cached_teachers() -> list[tuple[str, str]]:
    return list(_cache)
