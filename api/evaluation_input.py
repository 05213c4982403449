"""Labelled images for an evaluation, checked before anything is stored: multipart ``images[<class name>]`` files and/or
one zip (``archive``) with a folder per class. Each problem has its own code; images are decoded and checked exactly as
job uploads are (``api.validation.decode_image``).

A zip is read defensively: entry names are checked before anything is extracted (no absolute paths, no ``..``, no
backslashes), the declared sizes are summed against ``max_archive_uncompressed_bytes`` and each entry's compression
ratio against ``max_archive_compression_ratio`` (zip bombs), and every entry is read with a byte limit whatever its
header says. Nothing is ever written to disk from the archive: entries are decoded in memory.
"""

from __future__ import annotations

import io
import posixpath
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from api.validation import IMAGE_FIELD, DecodedImage, Problems, decode_image, invalid
from core.spec import normalise_text
from service.settings import Settings

ARCHIVE_FIELD = "archive"
DECODE_THREADS = 4  # images decoded at once while checking an evaluation's upload
# Entries a zip tool adds that are not images of any class: skipped, not refused.
IGNORED_ENTRIES = ("__MACOSX/", ".DS_Store", "Thumbs.db", "desktop.ini")


@dataclass
class EvaluationInput:
    images: list[DecodedImage]
    counts: dict[str, int]  # images per class, in the job's class order (classes without images left out)


def _class_lookup(class_names: list[str]) -> dict[str, str]:
    """Normalised, case-folded name -> the job's class name: a folder named 'Circle ' is the class 'circle'."""
    return {normalise_text(name).casefold(): name for name in class_names}


def _entry_parts(name: str) -> list[str]:
    """The path components of a zip entry name; raises ``unsafe_archive_path`` for names that could escape a folder."""
    if "\\" in name or "\x00" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise invalid("unsafe_archive_path", f"zip entry {name[:200]!r} is not a plain relative path", {"entry": name[:200]})
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts or posixpath.normpath(name).startswith(".."):
        raise invalid("unsafe_archive_path", f"zip entry {name[:200]!r} climbs out of the archive", {"entry": name[:200]})
    return parts


def _archive_entries(content: bytes, settings: Settings) -> list[tuple[str, str, bytes]]:
    """(folder, file name, bytes) of every file entry of a zip, after the safety checks; a single top folder that wraps
    the class folders (a zipped ``eval/`` folder) is looked through."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise invalid("invalid_archive", f"the archive is not a readable zip file: {exc}", status=400) from None
    files = [i for i in infos if not i.is_dir() and not any(marker in i.filename for marker in IGNORED_ENTRIES)]
    entries = [(info, _entry_parts(info.filename)) for info in files]
    if len(entries) > settings.max_evaluation_images:
        limit = settings.max_evaluation_images
        raise invalid("too_many_images", f"the archive holds {len(entries)} files; at most {limit} images", {"limit": limit}, 413)
    declared = sum(info.file_size for info in files)
    if declared > settings.max_archive_uncompressed_bytes:
        limit = settings.max_archive_uncompressed_bytes
        message = f"the archive expands to {declared} bytes; at most {limit}"
        raise invalid("archive_too_large", message, {"limit": limit, "uncompressed": declared}, 413)
    for info in files:
        if info.file_size > settings.max_archive_compression_ratio * max(info.compress_size, 1):
            ratio = info.file_size / max(info.compress_size, 1)
            message = f"zip entry {info.filename[:200]!r} expands {ratio:.0f}-fold (a zip bomb?)"
            details = {"entry": info.filename[:200], "limit_ratio": settings.max_archive_compression_ratio}
            raise invalid("archive_too_large", message, details, 413)
    # A zipped folder of class folders: every entry under one common top folder. Look through it.
    tops = {parts[0] for _, parts in entries if len(parts) >= 3}
    strip = 1 if len(tops) == 1 and all(len(parts) == 3 for _, parts in entries) else 0
    result = []
    for info, parts in entries:
        parts = parts[strip:]
        if len(parts) != 2:
            message = f"zip entry {info.filename[:200]!r} is not in a class folder (<class name>/<image>)"
            raise invalid("invalid_archive_layout", message, {"entry": info.filename[:200]})
        try:
            with archive.open(info) as handle:
                data = handle.read(settings.max_image_bytes + 1)  # the header's size is not trusted
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
            # RuntimeError: an encrypted entry; NotImplementedError: an unsupported compression method.
            raise invalid("invalid_archive", f"zip entry {info.filename[:200]!r} cannot be read: {exc}", status=400) from None
        result.append((parts[0], parts[1], data))
    # Folders that hold nothing but ignored entries or sub-folders: an empty class.
    folders_with_files = {folder for folder, _, _ in result}
    for info in infos:
        parts = [p for p in info.filename.split("/") if p][strip:]
        if info.is_dir() and len(parts) == 1 and parts[0] not in folders_with_files:
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
    images: list[DecodedImage] = []
    # Pillow decodes without the GIL: a few threads take thousands of images in a fraction of one thread's time.
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        decoded = [pool.submit(decode_image, content, name, position, filename, settings) for name, position, filename, content in known]
        for future in decoded:
            with problems.collect():
                images.append(future.result())
    problems.raise_any()
    return EvaluationInput(images, {name: counts[name] for name in class_names if name in counts})
