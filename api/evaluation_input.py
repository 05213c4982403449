"""Labelled images for an evaluation, checked before anything is stored: multipart ``images[<class name>]`` files and/or
one zip (``archive``) with a folder per class (read defensively: api.archives). Each problem has its own code; images
are decoded and checked exactly as job uploads are (``api.validation.decode_image``)."""

from __future__ import annotations

from dataclasses import dataclass

from api.archives import ARCHIVE_FIELD, decode_all, read_zip
from api.validation import IMAGE_FIELD, DecodedImage, Problems, invalid
from core.spec import normalise_text
from service.settings import Settings


@dataclass
class EvaluationInput:
    images: list[DecodedImage]
    counts: dict[str, int]  # images per class, in the job's class order (classes without images left out)


def _class_lookup(class_names: list[str]) -> dict[str, str]:
    """Normalised, case-folded name -> the job's class name: a folder named 'Circle ' is the class 'circle'."""
    return {normalise_text(name).casefold(): name for name in class_names}


def _archive_entries(content: bytes, settings: Settings) -> list[tuple[str, str, bytes]]:
    """(folder, file name, bytes) of every image of a zip with a folder per class (archives.read_zip's checks first); a
    single top folder that wraps the class folders (a zipped ``eval/`` folder) is looked through."""
    archive = read_zip(content, settings, max_files=settings.max_evaluation_images)
    entries = archive.files
    # A zipped folder of class folders: every entry under one common top folder. Look through it.
    tops = {entry.parts[0] for entry in entries if len(entry.parts) >= 3}
    strip = 1 if len(tops) == 1 and all(len(entry.parts) == 3 for entry in entries) else 0
    result = []
    for entry in entries:
        parts = entry.parts[strip:]
        if len(parts) != 2:
            message = f"zip entry {entry.name[:200]!r} is not in a class folder (<class name>/<image>)"
            raise invalid("invalid_archive_layout", message, {"entry": entry.name[:200]})
        result.append((parts[0], parts[1], entry.content))
    # Folders that hold nothing but ignored entries or sub-folders: an empty class.
    folders_with_files = {folder for folder, _, _ in result}
    for parts in archive.folders:
        parts = parts[strip:]
        if len(parts) == 1 and parts[0] not in folders_with_files:
            raise invalid("empty_class", f"the archive's folder {parts[0][:200]!r} holds no images", {"class": parts[0][:200]})
    return result


def evaluation_input(files: list[tuple[str, str | None, bytes]], class_names: list[str], settings: Settings) -> EvaluationInput:
    """``files``: (form field, file name, content) of every file part. Raises one ServiceError listing every problem."""
    lookup = _class_lookup(class_names)
    problems = Problems()
    labelled: list[tuple[str, str | None, bytes]] = []  # (the sent class name, file name, content)
    archives = [f for f in files if f[0] == ARCHIVE_FIELD]
    if len(archives) > 1:
        raise invalid("unexpected_field", "send at most one 'archive' zip", {"field": ARCHIVE_FIELD})
    for field_name, filename, content in files:
        if field_name == ARCHIVE_FIELD:
            labelled.extend(_archive_entries(content, settings))
            continue
        match = IMAGE_FIELD.match(field_name)
        if match is None:
            raise invalid("unexpected_field", f"unexpected file field {field_name!r}; send images[CLASS] files or one 'archive' zip",
                          {"field": field_name})  # fmt: skip
        labelled.append((match["name"], filename, content))
    if not labelled:
        raise invalid("no_images", "send labelled images: images[CLASS] files, or an 'archive' zip with a folder per class")
    sent_classes = {normalise_text(name).casefold() for name, _, _ in labelled}
    if len(sent_classes) > settings.max_classes:
        limit = settings.max_classes
        raise invalid("too_many_classes", f"images for {len(sent_classes)} classes; at most {limit}", {"limit": limit})
    if len(labelled) > settings.max_evaluation_images:
        limit = settings.max_evaluation_images
        raise invalid("too_many_images", f"{len(labelled)} images; at most {limit} per evaluation", {"limit": limit}, 413)
    counts: dict[str, int] = {}
    unknown: set[str] = set()
    known: list[tuple[str, int, str | None, bytes]] = []  # (class, position, file name, content)
    for sent_name, filename, content in labelled:
        class_name = lookup.get(normalise_text(sent_name).casefold())
        if class_name is None:
            if sent_name not in unknown:
                unknown.add(sent_name)
                details = {"class": sent_name[:200], "known": class_names}
                problems.add(invalid("unknown_class", f"{sent_name[:200]!r} is not one of the job's classes", details))
            continue
        known.append((class_name, counts.get(class_name, 0), filename, content))
        counts[class_name] = counts.get(class_name, 0) + 1
    images = decode_all(known, settings, problems)
    problems.raise_any()
    return EvaluationInput(images, {name: counts[name] for name in class_names if name in counts})
