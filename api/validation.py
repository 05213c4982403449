"""Everything a job submission must pass before it is queued; each violation has its own code.

Images are checked by decoding them with Pillow (never by file name or declared type), with a
pixel limit against decompression bombs.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import secrets
import unicodedata
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import ValidationError

from core.spec import CustomizeSpec, NoImagePriorError, SynthesisSpec, normalise_text, with_image_prior
from service import webhooks
from service.catalog import TeacherEntry, list_teachers
from service.errors import ServiceError
from service.settings import Settings
from service.submissions import JobSubmission
from service.uploads import SubmittedImage

ALLOWED_IMAGE_FORMATS = {"PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"}
IMAGE_FIELD = re.compile(r"^images\[(?P<name>.+)\]$")
# Decodable modes the worker's RGB conversion would get wrong (16-bit clipped to white) or that are not RGB-like: stored
# converted to 8-bit RGB PNG instead of rejected.
CONVERTED_MODES = {"CMYK", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "LAB", "HSV", "YCbCr"}
# Control characters (tabs and newlines included) and lone surrogates have no place in a class name or prompt.
FORBIDDEN_CATEGORIES = {"Cc", "Cs"}


def invalid(code: str, message: str, details: Any = None, status: int = 422) -> ServiceError:
    return ServiceError(code, message, status, details)


DecodedImage = SubmittedImage  # an upload decoded and checked here (service.submissions stores it)
Submission = JobSubmission  # what a job submission carries to service.submissions


WEBHOOK_FIELDS = ("webhook_url", "webhook_events")


def _webhook(raw: dict[str, Any], settings: Settings, problems: Problems) -> tuple[str | None, list[str] | None]:
    """The body's webhook fields, checked (an http(s) URL to a public address, known events); they are the service's,
    so they are taken out of the body before the spec is validated."""
    url, events = raw.get("webhook_url"), raw.get("webhook_events")
    if url is None:
        if events is not None:
            problems.add(invalid("invalid_webhook_url", "webhook_events needs a webhook_url"))
        return None, None
    if not isinstance(url, str) or (events is not None and not (isinstance(events, list) and all(isinstance(e, str) for e in events))):
        problems.add(invalid("invalid_webhook_url", "webhook_url is a string and webhook_events a list of event names"))
        return None, None
    try:
        webhooks.check_target(url, settings.webhook_allow_private_targets)
        return url, (None if events is None else webhooks.check_events(events))
    except webhooks.WebhookError as error:
        problems.add(
            invalid(error.code, str(error), {"field": "webhook_url" if "url" in error.code or "target" in error.code else "webhook_events"})
        )
        return None, None


# Problems check_classes reports: the schema's own complaints about the class list would repeat them.
CLASS_CODES = {"too_few_classes", "too_many_classes", "class_text_too_long", "control_character", "invalid_class_name", "duplicate_class"}


class Problems:
    """Every problem found in one request body, answered as one error: the first problem's code, message and status,
    and each problem (``{"code", "message", ...its own details}``) in ``details``, so a client fixes them all at once."""

    def __init__(self) -> None:
        self.found: list[ServiceError] = []

    def add(self, error: ServiceError) -> None:
        self.found.append(error)

    @contextmanager
    def collect(self) -> Iterator[None]:
        """Run a check that raises at its first problem; record it and go on with the next check."""
        try:
            yield
        except ServiceError as error:
            self.add(error)

    def raise_any(self) -> None:
        if not self.found:
            return
        first = self.found[0]
        details = [{"code": e.code, "message": e.message, **(e.details if isinstance(e.details, dict) else {})} for e in self.found]
        raise ServiceError(first.code, first.message, first.http_status, details)


def _class_entries(raw: dict[str, Any]) -> list[dict[str, Any]]:
    classes = raw.get("classes")
    if classes is None:
        raise invalid("classes_missing", "the spec needs a 'classes' list")
    if not isinstance(classes, list):
        raise invalid("invalid_spec", "'classes' must be a list of names or {name, text} objects")
    entries = []
    for item in classes:
        if isinstance(item, str):
            entries.append({"name": item})
        elif isinstance(item, dict):
            entries.append(dict(item))
        else:
            raise invalid("invalid_spec", f"a class must be a name or an object, not {type(item).__name__}")
    return entries


def check_classes(entries: list[dict[str, Any]], settings: Settings, problems: Problems) -> None:
    if len(entries) < 2:
        problems.add(invalid("too_few_classes", f"a classifier needs at least 2 classes, got {len(entries)}"))
    if len(entries) > (limit := settings.max_classes):
        problems.add(invalid("too_many_classes", f"at most {settings.max_classes} classes per job, got {len(entries)}", {"limit": limit}))
    names: set[str] = set()
    texts: set[str] = set()
    for entry in entries:
        for key in ("name", "text"):
            value = entry.get(key)
            if isinstance(value, str) and len(value) > settings.max_class_text_chars:
                problems.add(
                    invalid(
                        "class_text_too_long",
                        f"class {key} {value[:40]!r}... is {len(value)} characters; at most {settings.max_class_text_chars}",
                        {"limit": settings.max_class_text_chars},
                    )
                )
            # A whitespace-only name (tabs included) is an empty name, below; control characters inside a real one are refused.
            if isinstance(value, str) and normalise_text(value) and any(unicodedata.category(ch) in FORBIDDEN_CATEGORIES for ch in value):
                problems.add(invalid("control_character", f"class {key} {value[:40]!r} holds a control character", {"field": key}))
        name = entry.get("name")
        if not isinstance(name, str) or not normalise_text(name):
            problems.add(invalid("invalid_class_name", "every class needs a non-empty name"))
            continue
        key = normalise_text(name).casefold()
        if key in names:
            problems.add(invalid("duplicate_class", f"class {name!r} appears more than once", {"class": name}))
            continue  # one problem per class: its prompt text (the name) is a duplicate too
        names.add(key)
        text = entry.get("text") or (None if entry.get("images") else name)
        if isinstance(text, str):
            text_key = normalise_text(text).casefold()
            if text_key in texts:
                problems.add(invalid("duplicate_class", f"two classes share the prompt text {text!r}", {"text": text}))
            texts.add(text_key)


def fill_defaults(raw: dict[str, Any], settings: Settings, problems: Problems) -> tuple[dict[str, Any], TeacherEntry | None]:
    """The spec with the service's teacher and a seed where it has none, and its teacher's catalogue entry (None, with
    ``unknown_teacher`` recorded, for a teacher the service cannot run): one look at the catalogue per submission."""
    raw = dict(raw)
    if raw.get("teacher") is None:  # the spec's None: the service's default teacher, stored with the job
        raw["teacher"] = settings.default_teacher
    if raw.get("seed") is None:
        raw["seed"] = secrets.randbelow(2**31)  # chosen here and stored, so the job can be repeated
    entry = None
    with problems.collect():
        entry = known_teacher(raw["teacher"], settings)
    return raw, entry


def known_teacher(name: str, settings: Settings) -> TeacherEntry:
    """The catalogue's entry for teacher ``name`` (what a job's spec and a pool's embedding may name); 422
    ``unknown_teacher``, with the names it knows, for a teacher the service cannot run."""
    catalogue = list_teachers(settings.cache_dir, settings.extra_teachers)
    entry = next((t for t in catalogue if t.name == name), None)
    if entry is None:
        names = sorted(t.name for t in catalogue)
        raise invalid("unknown_teacher", f"unknown teacher {name!r}; known: {', '.join(names)}", {"known": names})
    return entry


def validate_spec(raw: dict[str, Any], problems: Problems, *, classes_checked: bool = False) -> dict[str, Any] | None:
    """The spec with every default filled in, or None with its problems recorded. ``classes_checked``: problems with
    the class list were already reported by check_classes, so the schema's own complaints about it are left out."""
    try:
        return CustomizeSpec.model_validate(raw).model_dump(mode="json")
    except ValidationError as exc:
        # The spec's own checks against the student registry come before the schema's other complaints.
        rest = []
        for e in exc.errors():
            problem = _registry_problem(e)
            if problem is None:
                rest.append(e)
            else:
                problems.add(problem)
        for e in rest:
            loc = [str(p) if not isinstance(p, int) else p for p in e["loc"]]
            if classes_checked and (loc[:1] == ["classes"] or not loc):  # the spec-level check is the classes' uniqueness
                continue
            where = ".".join(str(p) for p in loc)
            details = {"loc": loc, "msg": e["msg"], "type": e["type"]}
            if e["type"] == "extra_forbidden":
                problems.add(invalid("unknown_field", f"unknown spec field {where!r}", details))
            else:
                problems.add(invalid("invalid_spec", f"{where or 'spec'}: {e['msg']}", details))
        return None


def _registry_problem(error: Any) -> ServiceError | None:
    """A spec validator's error about a student (core.student_catalog: a name no entry has, a format its entry does not
    export to) under its own code, with the names it knows."""
    details = {"loc": list(error["loc"]), **{k: v for k, v in (error.get("ctx") or {}).items() if isinstance(v, list)}}
    if error["type"] == "unknown_student":
        return invalid("unknown_student", error["msg"], details)
    if error["type"] == "unsupported_export_format":
        return invalid("unsupported_export_format", error["msg"], details)
    return None


def parse_json_spec(body: bytes, settings: Settings) -> dict[str, Any]:
    if len(body) > settings.max_json_bytes:
        raise invalid("request_too_large", f"the JSON body is {len(body)} bytes; at most {settings.max_json_bytes}", status=413)
    try:
        raw = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid("invalid_json", f"the body is not valid JSON: {exc}", status=400) from None
    if not isinstance(raw, dict):
        raise invalid("invalid_spec", "the spec must be a JSON object")
    return raw


def _checked_spec(raw: dict[str, Any], entries: list[dict[str, Any]] | None, settings: Settings, problems: Problems) -> dict[str, Any]:
    """Defaults filled in and the schema applied; raises every problem recorded so far and found here at once."""
    filled, teacher = fill_defaults({**raw, "classes": entries if entries is not None else raw.get("classes")}, settings, problems)
    spec = validate_spec(filled, problems, classes_checked=entries is None or any(p.code in CLASS_CODES for p in problems.found))
    problems.raise_any()
    assert spec is not None and teacher is not None  # no problem recorded: the schema accepted it and the teacher is known
    spec = with_image_prior_written(spec, teacher, problems)
    problems.raise_any()
    return spec


def with_image_prior_written(spec: dict[str, Any], teacher: TeacherEntry, problems: Problems) -> dict[str, Any]:
    """The spec with the generator, decoder and prior its job uses written out (core.spec.with_image_prior, with the
    catalogue's paired decoder of its teacher): the 201 and the job say them. 422 ``no_image_prior`` where "auto" would
    draw noise."""
    try:
        synthesis = with_image_prior(SynthesisSpec.model_validate(spec["synthesis"]), teacher)
    except NoImagePriorError as exc:
        problems.add(invalid(NoImagePriorError.code, str(exc), {"teacher": teacher.name}))
        return spec
    return {**spec, "synthesis": synthesis.model_dump(mode="json")}


def _checked_entries(raw: dict[str, Any], settings: Settings, problems: Problems) -> list[dict[str, Any]] | None:
    with problems.collect():
        entries = _class_entries(raw)
        check_classes(entries, settings, problems)
        if any(entry.get("images") for entry in entries):
            message = "example images are sent as multipart files (images[CLASS]), not named in the spec"
            problems.add(invalid("images_require_upload", message))
        return entries
    return None


def submission_from_json(raw: dict[str, Any], settings: Settings) -> Submission:
    problems = Problems()
    webhook_url, webhook_events = _webhook(raw, settings, problems)
    body = {k: v for k, v in raw.items() if k not in WEBHOOK_FIELDS}
    entries = _checked_entries(body, settings, problems)
    spec = _checked_spec(body, entries, settings, problems)
    return Submission(spec, [], _hash({"spec": raw}), webhook_url, webhook_events)


def decode_image(content: bytes, class_name: str, position: int, filename: str | None, settings: Settings) -> DecodedImage:
    where = {"class": class_name, "filename": filename}
    if len(content) > settings.max_image_bytes:
        raise invalid("upload_too_large", f"image {filename!r} is {len(content)} bytes; at most {settings.max_image_bytes}", where, 413)
    if not content:
        raise invalid("invalid_image", f"image {filename!r} is empty", where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(content))
            width, height = image.size
            # Checked from the header, before any pixel is decoded.
            if max(width, height) > settings.max_image_side:
                raise invalid(
                    "image_dimensions_too_large",
                    f"image {filename!r} is {width}x{height} pixels; each side at most {settings.max_image_side}",
                    {**where, "limit": settings.max_image_side},
                )
            if width * height > settings.max_image_pixels:
                raise invalid(
                    "decompression_bomb",
                    f"image {filename!r} is {width}x{height} pixels; at most {settings.max_image_pixels} pixels",
                    {**where, "limit": settings.max_image_pixels},
                )
            if image.format not in ALLOWED_IMAGE_FORMATS:
                raise invalid(
                    "unsupported_image_type", f"image {filename!r} is {image.format}; allowed: {sorted(ALLOWED_IMAGE_FORMATS)}", where, 415
                )
            if getattr(image, "n_frames", 1) > 1:
                raise invalid("animated_image", f"image {filename!r} has {image.n_frames} frames; send still images", where)
            image.load()  # decode every pixel: truncated or corrupt files fail here
            content_type = Image.MIME.get(image.format or "", "application/octet-stream")
            if image.mode in CONVERTED_MODES:
                content, content_type = _as_rgb_png(image), "image/png"
    except ServiceError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise invalid("decompression_bomb", f"image {filename!r}: {exc}", where) from None
    except UnidentifiedImageError:
        raise invalid("invalid_image", f"file {filename!r} is not an image in a format Pillow recognises", where) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise invalid("invalid_image", f"file {filename!r} is not a decodable image: {_plain(exc)}", where) from None
    return DecodedImage(class_name, position, filename, content, content_type, width, height)


def _plain(exc: BaseException) -> str:
    """An exception's message without the Python object reprs Pillow puts in some (``<_io.BytesIO object at 0x...>``)."""
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc)).strip() or type(exc).__name__


def _as_rgb_png(image: Image.Image) -> bytes:
    """8-bit RGB PNG of a decodable image in an awkward mode: 16- and 32-bit values scaled (not clipped) to 8 bits."""
    image = ImageOps.exif_transpose(image)  # the orientation would be lost with the EXIF
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(np.rint(values * 255.0 / top), 0, 255).astype(np.uint8), "L")
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def submission_from_multipart(spec_text: str | None, files: list[tuple[str, str | None, bytes]], settings: Settings) -> Submission:
    """``files``: (form field, file name, content) for every file part; fields are named ``images[CLASS]``."""
    if spec_text is None:
        raise invalid("spec_missing", "a multipart job needs a 'spec' field holding the JSON spec")
    problems = Problems()
    raw_body = parse_json_spec(spec_text.encode(), settings)
    webhook_url, webhook_events = _webhook(raw_body, settings, problems)
    raw = {k: v for k, v in raw_body.items() if k not in WEBHOOK_FIELDS}
    entries = _checked_entries(raw, settings, problems)
    by_name = {entry.get("name"): entry for entry in entries or []}
    images: list[DecodedImage] = []
    counts: dict[str, int] = {}
    for field_name, filename, content in files:
        with problems.collect():
            match = IMAGE_FIELD.match(field_name)
            if match is None:
                message = f"unexpected file field {field_name!r}; images go in images[CLASS]"
                raise invalid("unexpected_field", message, {"field": field_name})
            class_name = match["name"]
            if entries is not None and class_name not in by_name:
                raise invalid(
                    "images_for_unknown_class",
                    f"images given for {class_name!r}, which is not one of the spec's classes",
                    {"class": class_name},
                )
            counts[class_name] = counts.get(class_name, 0) + 1
            if counts[class_name] > settings.max_images_per_class:
                raise invalid(
                    "too_many_images",
                    f"class {class_name!r} has more than {settings.max_images_per_class} images",
                    {"class": class_name, "limit": settings.max_images_per_class},
                )
            images.append(decode_image(content, class_name, counts[class_name] - 1, filename, settings))
    # Placeholders so that validation sees which classes are given by images; the caller puts upload ids here.
    for name, count in counts.items():
        if name in by_name:
            by_name[name]["images"] = [f"pending-{i}" for i in range(count)]
    spec = _checked_spec(raw, entries, settings, problems)
    digest = _hash({"spec": raw_body, "files": [[f, hashlib.sha256(c).hexdigest()] for f, _, c in files]})
    return Submission(spec, images, digest, webhook_url, webhook_events)


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
