"""What the service can run, known without torch: teacher folders (bundled and cached); the student architectures are
core.student_catalog's entries."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


@dataclass(frozen=True)
class TeacherEntry:
    name: str
    source: str  # bundled, cached or configured
    image_size: int | None
    description: str
    # Its latent decoder (the folder's config "decoder", as core.teachers.sources reads it): what generator "auto"
    # picks, and so what a job of this teacher resolves to (core.spec.resolve). None for configured open_clip names.
    paired_decoder: str | None = None


def bundled_teachers_dir() -> Path:
    # find_spec locates core.teachers without executing it (its __init__ imports torch).
    spec = importlib.util.find_spec("core.teachers")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "bundled"


def default_cache_dir() -> Path:
    # Mirrors core.teachers.default_cache_dir, which cannot be imported without torch.
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clipforge"


def _read_folder(folder: Path, source: str) -> TeacherEntry | None:
    config_path = folder / CONFIG_FILE
    if not config_path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    description = config.get("description") or config.get("extra", {}).get("description") or f"clipforge teacher ({source})"
    image_size = config.get("model", {}).get("vision_cfg", {}).get("image_size")
    decoder = config.get("decoder")
    return TeacherEntry(folder.name, source, image_size, str(description), decoder if isinstance(decoder, str) and decoder else None)


def list_teachers(cache_dir: Path | None, extra: list[str] = []) -> list[TeacherEntry]:  # noqa: B006 (read only)
    """Bundled teachers, those installed in ``<cache_dir>/teachers``, and names the operator configured (bundled win)."""
    found: dict[str, TeacherEntry] = {}
    for name in extra:
        found[name] = TeacherEntry(name, "configured", None, "configured by the operator (CLIPFORGE_EXTRA_TEACHERS)")
    cache_root = (cache_dir or default_cache_dir()) / "teachers"
    for root, source in ((cache_root, "cached"), (bundled_teachers_dir(), "bundled")):
        if root.is_dir():
            for folder in sorted(root.iterdir()):
                entry = _read_folder(folder, source)
                if entry is not None:
                    found[entry.name] = entry
    return sorted(found.values(), key=lambda e: e.name)


def find_teacher(name: str, cache_dir: Path | None, extra: list[str] = []) -> TeacherEntry | None:  # noqa: B006 (read only)
    """The catalogue's entry for teacher ``name``, or None when the service cannot run it."""
    return next((entry for entry in list_teachers(cache_dir, extra) if entry.name == name), None)
