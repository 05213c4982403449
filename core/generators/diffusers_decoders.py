"""Decoders of real images from a maintained library (diffusers), the image prior a real CLIP teacher needs.

A decoder folder of another ``family`` than clipforge's own VAE holds the diffusers model as that library saves it
(``diffusers/``: its ``config.json`` and ``diffusion_pytorch_model.safetensors``) beside clipforge's ``config.json``,
which names the family, the image size jobs decode at and the latent shape that follows, and where the weights came
from. The families:

- ``taesd``: ``AutoencoderTiny`` (TAESD, 2.4 M parameters: decodes a 224 px image from a 4 x 28 x 28 latent in a few
  milliseconds on a CPU), the default image prior for open_clip teachers;
- ``vq``: ``VQModel`` (the paper's VQGAN kind), decoded *without* its quantiser, so that inversion's gradients move the
  codes smoothly (quantising snaps every step back to a codebook entry).

``clipforge decoders pull NAME`` fetches one of ``PULLABLE`` into the cache. Both families ship their encoder, so
``clipforge priors build`` fits a prior over any folder of images for them. diffusers is imported on first use: a
process that never decodes through one does not pay for it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

DIFFUSERS_SUBDIR = "diffusers"  # the model folder as diffusers saves it (save_pretrained / from_pretrained)
HF_HOST = "huggingface.co"


@dataclass(frozen=True)
class Family:
    model_class: str  # the diffusers class that loads the saved model
    downscale: int  # image side over latent side
    description: str


FAMILIES: dict[str, Family] = {
    "taesd": Family("AutoencoderTiny", 8, "TAESD, the tiny autoencoder of Stable Diffusion's latent space"),
    "vq": Family("VQModel", 0, "a VQGAN-style autoencoder (diffusers VQModel), decoded without its quantiser"),
}


@dataclass(frozen=True)
class PullSource:
    repo: str  # Hugging Face repository
    subfolder: str | None  # the model's folder inside it
    family: str
    description: str


# What `clipforge decoders pull NAME` knows how to fetch.
PULLABLE: dict[str, PullSource] = {
    "taesd": PullSource("madebyollin/taesd", None, "taesd", "TAESD (madebyollin/taesd): Stable Diffusion 1.x's latent space, any photo"),
    "movq": PullSource(
        "kandinsky-community/kandinsky-2-2-decoder", "movq", "vq", "MoVQ (Kandinsky 2.2's VQGAN), trained on general web images"
    ),
}


def _model_class(family: str) -> type:
    import diffusers  # heavy: imported when a decoder of this kind is first used

    # Its loader warns of accelerate's absence and of config keys its own save_pretrained wrote: noise in a job's log.
    diffusers.utils.logging.set_verbosity_error()
    return getattr(diffusers, FAMILIES[family].model_class)


def downscale_of(model: nn.Module, family: str) -> int:
    """Image side over latent side of a diffusers autoencoder: TAESD's is fixed, a VQModel's follows its blocks."""
    if FAMILIES[family].downscale:
        return FAMILIES[family].downscale
    return 2 ** (len(model.config.block_out_channels) - 1)


def latent_channels_of(model: nn.Module) -> int:
    return int(model.config.latent_channels)


class DiffusersDecoder(nn.Module):
    """Latents -> RGB in [0, 1] at the folder's image size, through a frozen diffusers autoencoder's decoder."""

    def __init__(self, model: nn.Module, config) -> None:  # config: core.generators.decoder.DecoderConfig
        super().__init__()
        self.model, self.config, self.family = model, config, config.family

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        options = {"force_not_quantize": True} if self.family == "vq" else {}
        images = self.model.decode(z, **options).sample
        return ((images + 1) / 2).clamp(0.0, 1.0)  # diffusers decodes to [-1, 1]


class DiffusersEncoder(nn.Module):
    """RGB in [0, 1] -> (latents, zero log-variance): the deterministic codes a prior is fitted on."""

    def __init__(self, model: nn.Module, config) -> None:
        super().__init__()
        self.model, self.config = model, config

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = self.model.encode(images * 2 - 1).latents
        return latents, torch.zeros_like(latents)


def load_model(folder: Path, family: str) -> nn.Module:
    """The saved diffusers model of a decoder folder: float32, eval mode, frozen. Reads local files only."""
    model_class = _model_class(family)
    # Building the modules draws from torch's global RNG before the weights overwrite them: a seeded job must not see it.
    with torch.random.fork_rng(devices=[]):
        model = model_class.from_pretrained(str(folder / DIFFUSERS_SUBDIR), local_files_only=True, torch_dtype=torch.float32)
    return model.eval().requires_grad_(False)


def write_decoder_folder(model: nn.Module, folder: Path, *, name: str, family: str, image_size: int, card: dict) -> Path:
    """``folder`` as a decoder of ``family`` whose jobs decode ``image_size`` px images: the model saved by diffusers,
    clipforge's config and a card. Written to a temporary folder beside it and renamed: whole or not at all."""
    if family not in FAMILIES:
        raise ValueError(f"unknown decoder family {family!r}; known: {', '.join(FAMILIES)}")
    downscale = downscale_of(model, family)
    if image_size % downscale:
        raise ValueError(f"image_size {image_size} is not a multiple of the decoder's downscale {downscale}")
    config = {
        "name": name,
        "family": family,
        "image_size": image_size,
        "latent_channels": latent_channels_of(model),
        "latent_size": image_size // downscale,
        "description": card.get("description") or FAMILIES[family].description,
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        model.save_pretrained(str(staging / DIFFUSERS_SUBDIR), safe_serialization=True)
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (staging / "card.json").write_text(json.dumps({**card, "family": family, "image_size": image_size}, indent=2) + "\n")
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
