"""`clipforge decoders pull NAME`: a pretrained decoder from the Hugging Face hub into the cache, as a decoder folder
(core.generators.diffusers_decoders). Offline it fails within seconds with ``decoder_unavailable`` (one short network
probe, no hub retries), as teachers do."""

from __future__ import annotations

from pathlib import Path

import torch

from core.generators.decoder import DecoderError, UnknownDecoderError, cache_decoders_dir, is_decoder_dir
from core.generators.diffusers_decoders import HF_HOST, PULLABLE, _model_class, write_decoder_folder

HUB_SUBDIR = "hub"  # <cache>/hub: the hub's own download cache (kept: a second pull at another image size reads it)
DEFAULT_PULL_IMAGE_SIZE = 224  # the image side jobs decode at: ViT-B-32's input


class DecoderExistsError(DecoderError):
    code = "decoder_exists"


def pull_decoder(name: str, *, cache_dir: str | Path | None = None, image_size: int = DEFAULT_PULL_IMAGE_SIZE, force: bool = False) -> Path:
    """Decoder ``name`` (one of PULLABLE) fetched into ``<cache>/decoders/<name>/``, decoding ``image_size`` px images.
    An existing folder is kept (``decoder_exists``) unless ``force``."""
    from core.teachers.sources import default_cache_dir, network_reachable  # the one cache directory and probe

    source = PULLABLE.get(name)
    if source is None:
        raise UnknownDecoderError(f"no pretrained decoder {name!r} to pull; known: {', '.join(sorted(PULLABLE))}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache_decoders_dir(cache) / name
    if is_decoder_dir(folder) and not force:
        raise DecoderExistsError(f"decoder {name!r} is already at {folder}; --force replaces it")
    if not network_reachable(HF_HOST):
        raise DecoderError(
            f"decoder {name!r} ({source.repo}) cannot be fetched: {HF_HOST} cannot be reached (offline?). On a machine "
            f"with internet run `clipforge decoders pull {name} --cache-dir DIR` and copy DIR/decoders/{name} to {folder}"
        )
    with torch.random.fork_rng(devices=[]):
        model = _model_class(source.family).from_pretrained(
            source.repo, subfolder=source.subfolder, cache_dir=str(cache / HUB_SUBDIR), torch_dtype=torch.float32
        )
    card = {
        "description": source.description,
        "source": {"repo": source.repo, "subfolder": source.subfolder, "commit": getattr(model.config, "_commit_hash", None)},
    }
    if force and folder.exists():
        import shutil

        shutil.rmtree(folder)
    return write_decoder_folder(model.eval(), folder, name=name, family=source.family, image_size=image_size, card=card)
