"""Images sent in bulk, checked before anything is stored: one zip read defensively, and many images decoded at once.
Evaluations (labelled, a folder per class) and image pools (unlabelled, any layout) both take them this way.

A zip's entry names are checked before anything is read (no absolute paths, no ``..``, no backslashes), the declared
sizes are summed against ``max_archive_uncompressed_bytes`` and each entry's compression ratio against
``max_archive_compression_ratio`` (zip bombs), and every entry is read with a byte limit whatever its header says.
Nothing is ever written to disk from the archive: entries are decoded in memory.
"""

from __future__ import annotations

import io
import posixpath
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from api.validation import DecodedImage, Problems, decode_image, invalid
from service.settings import Settings

ARCHIVE_FIELD = "archive"  # the multipart field of a zip
IMAGES_FIELD = "images"  # the multipart field of an unlabelled image
DECODE_THREADS = 4  # images decoded at once (Pillow decodes without the GIL)
# Entries a zip tool adds that are not images: skipped, not refused.
IGNORED_ENTRIES = ("__MACOSX/", ".DS_Store", "Thumbs.db", "desktop.ini")


@dataclass(frozen=True)
class ArchiveFile:
    name: str  # the entry's name in the zip
    parts: list[str]  # its path components
    content: bytes


@dataclass(frozen=True)
class Archive:
    files: list[ArchiveFile]
    folders: list[list[str]]  # the path components of every folder entry


def entry_parts(name: str) -> list[str]:
    """The path components of a zip entry name; raises ``unsafe_archive_path`` for names that could escape a folder."""
    if "\\" in name or "\x00" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise invalid("unsafe_archive_path", f"zip entry {name[:200]!r} is not a plain relative path", {"entry": name[:200]})
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts or posixpath.normpath(name).startswith(".."):
        raise invalid("unsafe_archive_path", f"zip entry {name[:200]!r} climbs out of the archive", {"entry": name[:200]})
    return parts


def read_zip(content: bytes, settings: Settings, *, max_files: int) -> Archive:
    """Every file entry of a zip (at most ``max_files``) after the safety checks, each read with a byte limit."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise invalid("invalid_archive", f"the archive is not a readable zip file: {exc}", status=400) from None
    files = [i for i in infos if not i.is_dir() and not any(marker in i.filename for marker in IGNORED_ENTRIES)]
    named = [(info, entry_parts(info.filename)) for info in files]
    if len(named) > max_files:
        raise invalid("too_many_images", f"the archive holds {len(named)} files; at most {max_files} images", {"limit": max_files}, 413)
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
    result = []
    for info, parts in named:
        try:
            with archive.open(info) as handle:
                data = handle.read(settings.max_image_bytes + 1)  # the header's size is not trusted
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
            # RuntimeError: an encrypted entry; NotImplementedError: an unsupported compression method.
            raise invalid("invalid_archive", f"zip entry {info.filename[:200]!r} cannot be read: {exc}", status=400) from None
        result.append(ArchiveFile(info.filename, parts, data))
    folders = [[p for p in info.filename.split("/") if p] for info in infos if info.is_dir()]
    return Archive(result, folders)


def decode_all(items: Sequence[tuple[str, int, str | None, bytes]], settings: Settings, problems: Problems) -> list[DecodedImage]:
    """(class name, position, file name, content) decoded and checked as job uploads are (api.validation.decode_image),
    on a few threads; each image's problem is recorded in ``problems``, the images that pass are returned in order."""
    images: list[DecodedImage] = []
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        decoded = [pool.submit(decode_image, content, name, position, filename, settings) for name, position, filename, content in items]
        for future in decoded:
            with problems.collect():
                images.append(future.result())
    return images


def unlabelled_images(
    files: list[tuple[str, str | None, bytes]], settings: Settings, *, max_images: int, per: str = "pool"
) -> list[DecodedImage]:
    """Images without labels, for an image pool: ``images`` files and/or one ``archive`` zip in any folder layout.
    ``files``: (form field, file name, content) of every file part. Raises one ServiceError listing every problem."""
    sent: list[tuple[str | None, bytes]] = []
    archives = [f for f in files if f[0] == ARCHIVE_FIELD]
    if len(archives) > 1:
        raise invalid("unexpected_field", "send at most one 'archive' zip", {"field": ARCHIVE_FIELD})
    for field_name, filename, content in files:
        if field_name == ARCHIVE_FIELD:
            sent.extend((entry.name, entry.content) for entry in read_zip(content, settings, max_files=max_images).files)
        elif field_name == IMAGES_FIELD:
            sent.append((filename, content))
        else:
            message = f"unexpected file field {field_name!r}; send 'images' files or one 'archive' zip"
            raise invalid("unexpected_field", message, {"field": field_name})
    if not sent:
        raise invalid("no_images", "send unlabelled images: 'images' files, or an 'archive' zip of images")
    if len(sent) > max_images:
        raise invalid("too_many_images", f"{len(sent)} images; at most {max_images} per {per}", {"limit": max_images}, 413)
    problems = Problems()
    images = decode_all([("", position, filename, content) for position, (filename, content) in enumerate(sent)], settings, problems)
    problems.raise_any()
    return images
