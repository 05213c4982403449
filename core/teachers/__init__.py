"""Teachers: frozen CLIP models behind one interface, created by name with ``create_teacher``."""

from core.teachers.base import DEFAULT_TEMPLATE, Teacher
from core.teachers.sources import (
    TEACHERS,
    TeacherError,
    TeacherInfo,
    TeacherLoadError,
    TeacherUnavailableError,
    UnknownTeacherError,
    create_teacher,
    default_cache_dir,
    list_teachers,
    parse_open_clip_name,
    pull_pretrained,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "TEACHERS",
    "Teacher",
    "TeacherError",
    "TeacherInfo",
    "TeacherLoadError",
    "TeacherUnavailableError",
    "UnknownTeacherError",
    "create_teacher",
    "default_cache_dir",
    "list_teachers",
    "parse_open_clip_name",
    "pull_pretrained",
]
