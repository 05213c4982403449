"""Where teacher weights come from: bundled files, the cache directory, checkpoints, open_clip tags.

Offline-first: a pretrained tag is looked up in the cache before any network access, and when
it is not cached the network is probed once with a short timeout, so that an offline machine
gets a clear error in seconds instead of a minute of hub retries.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer
from safetensors.torch import load_file

from core.devices import resolve_device
from core.registry import Registry
from core.teachers.base import Teacher
from core.teachers.clip_config import OPENAI_MEAN, OPENAI_STD, TeacherConfig, build_clip

BUNDLED_DIR = Path(__file__).parent / "bundled"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
HF_HOST = "huggingface.co"
HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
NETWORK_PROBE_TIMEOUT_S = 3.0


class TeacherError(RuntimeError):
    """Base class of teacher errors; ``code`` is machine-readable."""

    code = "teacher_error"


class UnknownTeacherError(TeacherError):
    code = "unknown_teacher"


class TeacherUnavailableError(TeacherError):
    code = "teacher_unavailable"


class TeacherLoadError(TeacherError):
    code = "teacher_load_failed"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/clipforge`` (``~/.cache/clipforge``); settings may name another."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clipforge"


# ------------------------------------------------------------------------------------------
# clipforge-format teachers: a folder with config.json and weights.safetensors
# ------------------------------------------------------------------------------------------


def clipforge_teacher_dirs(cache_dir: Path) -> dict[str, Path]:
    """Bundled teachers and those installed under ``<cache_dir>/teachers``, by name (bundled win)."""
    found: dict[str, Path] = {}
    for root in (cache_dir / "teachers", BUNDLED_DIR):
        if root.is_dir():
            for folder in sorted(root.iterdir()):
                if (folder / CONFIG_FILE).is_file():
                    found[folder.name] = folder
    return found


def load_clipforge_teacher(folder: Path, device: torch.device) -> Teacher:
    config = TeacherConfig.from_file(folder / CONFIG_FILE)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise TeacherLoadError(f"teacher {config.name!r} has no weights file at {weights}")
    model = build_clip(config)
    try:
        state = load_file(str(weights))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except Exception as exc:  # a corrupt or mismatched file: name it, keep the cause
        raise TeacherLoadError(f"could not load teacher weights {weights}: {exc}") from exc
    tokenizer = SimpleTokenizer(context_length=config.context_length)
    teacher = Teacher(
        config.name,
        model,
        tokenizer,
        image_size=config.image_size,
        mean=config.image_mean,
        std=config.image_std,
        styles=config.extra.get("styles"),
        decoder=config.extra.get("decoder"),
        vocabulary=config.extra.get("vocabulary"),
    )
    return teacher.to(device)


# ------------------------------------------------------------------------------------------
# open_clip models: pretrained tags and local checkpoint files
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenClipRef:
    model: str  # open_clip architecture name, e.g. "ViT-B-32"
    tag: str | None = None  # pretrained tag, e.g. "openai"
    checkpoint: Path | None = None  # a local checkpoint file instead of a tag

    @property
    def name(self) -> str:
        return f"{self.model}/{self.tag}" if self.tag else f"{self.model}@{self.checkpoint}"


def parse_open_clip_name(name: str, checkpoint: str | Path | None = None) -> OpenClipRef | None:
    """``MODEL/TAG``, ``MODEL@/path/to/checkpoint`` or ``MODEL`` with ``checkpoint``; else None."""
    if checkpoint is not None:
        return OpenClipRef(name, checkpoint=Path(checkpoint))
    if "@" in name:
        model, path = name.split("@", 1)
        return OpenClipRef(model, checkpoint=Path(path))
    if "/" in name:
        model, tag = name.split("/", 1)
        return OpenClipRef(model, tag=tag)
    return None


def _pretrained_cfg(ref: OpenClipRef) -> dict:
    assert ref.tag is not None
    if ref.model not in open_clip.list_models():
        raise UnknownTeacherError(f"unknown open_clip model {ref.model!r} in teacher {ref.name!r}")
    cfg = open_clip.get_pretrained_cfg(ref.model, ref.tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(ref.model)) or "none"
        raise UnknownTeacherError(f"open_clip model {ref.model!r} has no pretrained tag {ref.tag!r}; its tags: {tags}")
    return cfg


def _hf_candidates(cfg: dict) -> tuple[str, list[str]] | None:
    if not cfg.get("hf_hub"):
        return None
    # "org/repo/" means the default file names; "org/repo/file.bin" names one file.
    repo_id, filename = os.path.split(cfg["hf_hub"])
    if not filename:
        return repo_id, list(HF_FILES)
    stem, ext = os.path.splitext(filename)
    return repo_id, ([stem + ".safetensors"] if ext in (".bin", ".pth") else []) + [filename]


def cached_pretrained_file(ref: OpenClipRef, cache_dir: Path) -> Path | None:
    """The cached weights file of a pretrained tag, or None; touches no network."""
    from huggingface_hub import try_to_load_from_cache

    cfg = _pretrained_cfg(ref)
    hf = _hf_candidates(cfg)
    if hf is not None:
        repo_id, files = hf
        for filename in files:
            hit = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache_dir))
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
    if cfg.get("url"):
        local = cache_dir / os.path.basename(urlparse(cfg["url"]).path)
        if local.is_file():
            return local
    return None


def _download_host(cfg: dict) -> str:
    return HF_HOST if cfg.get("hf_hub") else (urlparse(cfg.get("url", "")).hostname or HF_HOST)


def network_reachable(host: str, timeout: float = NETWORK_PROBE_TIMEOUT_S) -> bool:
    """Whether ``host:443`` accepts a TCP connection within ``timeout`` seconds (DNS included)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False

    def connect() -> bool:
        with socket.create_connection((host, 443), timeout=timeout):
            return True

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        # DNS lookups ignore socket timeouts, so bound the whole probe from outside.
        return pool.submit(connect).result(timeout=timeout)
    except Exception:
        return False
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _not_cached_error(ref: OpenClipRef, cache_dir: Path, host: str) -> TeacherUnavailableError:
    return TeacherUnavailableError(
        f"teacher {ref.name!r}: its pretrained weights are not in the cache directory {cache_dir} "
        f"and {host} cannot be reached (offline?). On a machine with internet run "
        f"`clipforge teachers pull {ref.name} --cache-dir {cache_dir}` and copy that directory here, "
        f"or use a local checkpoint file as '{ref.model}@/path/to/weights'."
    )


def pull_pretrained(ref: OpenClipRef, cache_dir: Path) -> Path:
    """Download a pretrained tag into the cache (a no-op when cached)."""
    cached = cached_pretrained_file(ref, cache_dir)
    if cached is not None:
        return cached
    cfg = _pretrained_cfg(ref)
    host = _download_host(cfg)
    if not network_reachable(host):
        raise _not_cached_error(ref, cache_dir, host)
    cache_dir.mkdir(parents=True, exist_ok=True)
    return Path(open_clip.download_pretrained(cfg, cache_dir=str(cache_dir)))


def load_open_clip_teacher(ref: OpenClipRef, cache_dir: Path, device: torch.device, *, download: bool = True) -> Teacher:
    if ref.tag is not None:
        cfg = _pretrained_cfg(ref)
        weights = cached_pretrained_file(ref, cache_dir)
        if weights is None:
            if not download:
                raise _not_cached_error(ref, cache_dir, _download_host(cfg))
            weights = pull_pretrained(ref, cache_dir)
    else:
        if ref.model not in open_clip.list_models():
            raise UnknownTeacherError(f"unknown open_clip model {ref.model!r} in teacher {ref.name!r}")
        assert ref.checkpoint is not None
        if not ref.checkpoint.is_file():
            raise TeacherUnavailableError(f"teacher {ref.name!r}: checkpoint file {ref.checkpoint} does not exist")
        cfg, weights = {}, ref.checkpoint
    try:
        model = open_clip.create_model(
            ref.model, pretrained=str(weights), force_quick_gelu=bool(cfg.get("quick_gelu", False)), pretrained_text=False
        )
    except Exception as exc:
        raise TeacherLoadError(f"could not load teacher {ref.name!r} from {weights}: {exc}") from exc
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, tuple | list) else image_size
    teacher = Teacher(
        ref.name,
        model,
        open_clip.get_tokenizer(ref.model),
        image_size=int(image_size),
        mean=cfg.get("mean", OPENAI_MEAN),
        std=cfg.get("std", OPENAI_STD),
    )
    return teacher.to(device)


# ------------------------------------------------------------------------------------------
# The one entry point
# ------------------------------------------------------------------------------------------

# Programmatic teachers: ``@TEACHERS.register("name")`` on a ``factory(device) -> Teacher``.
TEACHERS: Registry[Teacher] = Registry("teacher")


def create_teacher(
    name: str,
    *,
    device: str | torch.device | None = "auto",
    cache_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    download: bool = True,
) -> Teacher:
    """Load a teacher by name.

    ``name`` is a bundled or cached clipforge teacher (``shapes-mini``), an open_clip pretrained
    tag (``ViT-B-32/openai``), or an open_clip model with a local checkpoint file
    (``RN50@/models/rn50.pt``, or ``name="RN50", checkpoint=...``).
    """
    torch_device = resolve_device(device)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if checkpoint is None and name in TEACHERS:
        return TEACHERS.create(name, device=torch_device)
    if checkpoint is None:
        folders = clipforge_teacher_dirs(cache)
        if name in folders:
            return load_clipforge_teacher(folders[name], torch_device)
    ref = parse_open_clip_name(name, checkpoint)
    if ref is None:
        known = ", ".join([*TEACHERS.names(), *clipforge_teacher_dirs(cache)])
        raise UnknownTeacherError(f"unknown teacher {name!r}; use one of [{known}], an open_clip MODEL/TAG or MODEL@CHECKPOINT")
    return load_open_clip_teacher(ref, cache, torch_device, download=download)


@dataclass(frozen=True)
class TeacherFactsOnDisk:
    """What resolving a spec needs of a teacher (core.spec.TeacherFacts), read without loading its weights."""

    name: str
    paired_decoder: str | None


def teacher_facts(name: str, cache_dir: str | Path | None = None) -> TeacherFactsOnDisk | None:
    """The facts of teacher ``name`` from its folder's config, or of an open_clip name (no paired decoder), before any
    weight is read, so that a job refused for its spec is refused at once; None for a programmatic teacher (known only
    once built) or a name no source has (create_teacher's error to raise)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if name in TEACHERS:
        return None
    folders = clipforge_teacher_dirs(cache)
    if name in folders:
        decoder = TeacherConfig.from_file(folders[name] / CONFIG_FILE).extra.get("decoder")
        return TeacherFactsOnDisk(name, decoder if isinstance(decoder, str) and decoder else None)
    return TeacherFactsOnDisk(name, None) if parse_open_clip_name(name) is not None else None


@dataclass(frozen=True)
class TeacherInfo:
    name: str  # what create_teacher takes
    source: str  # "bundled", "cache" or "open_clip"
    available: bool  # loadable without network
    description: str


def list_teachers(cache_dir: str | Path | None = None, *, include_tags: bool = False) -> list[TeacherInfo]:
    """Local teachers, plus every open_clip pretrained tag (marked cached or not) with ``include_tags``."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    infos = [
        TeacherInfo(
            name,
            "bundled" if folder.parent == BUNDLED_DIR else "cache",
            (folder / WEIGHTS_FILE).is_file(),
            TeacherConfig.from_file(folder / CONFIG_FILE).description,
        )
        for name, folder in clipforge_teacher_dirs(cache).items()
    ]
    for model, tag in open_clip.list_pretrained():
        ref = OpenClipRef(model, tag=tag)
        cached = cached_pretrained_file(ref, cache) is not None
        if include_tags or cached:
            infos.append(TeacherInfo(ref.name, "open_clip", cached, "open_clip pretrained weights"))
    return infos
