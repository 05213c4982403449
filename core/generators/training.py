"""Training a latent decoder: a small VAE on unlabelled images (``core.generators.decoder`` holds its parts).

One training loop (``train_vae``) serves both the bundled ``shapes-vae`` (``bench/train_decoder.py``, on
freshly rendered world images) and ``clipforge decoders train`` (``train_decoder_on_folder``, on any folder
of images a user has). The loss is the bundle's: pixel L1 (it keeps edges sharp where MSE blurs them), L1
of the pixel differences (edges and corners are few pixels, and plain L1 drew stars as blobs), and a low
KL weight per latent element; Adam with a linear warm-up and a cosine decay. A run is a pure function of
its seed and step count: batches come from (seed, step), and ``minutes`` is only a safety cap (the card
records which of the two stopped it).

A decoder made here ships its encoder (``encoder.safetensors``) and a default latent prior over its
folder (``latent_prior.safetensors``), so a job can use it at once as ``"synthesis": {"decoder": NAME}``
and ``clipforge priors build`` can fit other priors for it later.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from core.generators.decoder import (
    CARD_FILE,
    CONFIG_FILE,
    ENCODER_FILE,
    FITTED_PRIOR,
    PRIOR_FILE,
    WEIGHTS_FILE,
    DecoderConfig,
    LatentDecoder,
    LatentEncoder,
    is_decoder_dir,
    load_decoder_from,
    load_encoder_from,
    prior_card_file,
)
from core.generators.image_folder import Cancelled, ImageFolder, ImageFolderError, ShuffledBatches, as_float, load_image_folder
from core.generators.priors import PriorFitConfig, fit_folder_prior, write_json

LATENT_SIZE = 8  # latent map side of every decoder trained here, as shapes-vae's: 512 codes a prior can cover
MAX_WIDTH = 128  # channels at the lowest resolutions; a level below 32 px adds a level of this width
IMAGE_SIZES = (16, 32, 64, 128)  # LATENT_SIZE times a power of two
MIN_IMAGES = 2  # one to train on, one to hold out
HELD_OUT_SHARE = 0.05  # of a folder's images, kept out of training to measure reconstruction on unseen images
MAX_HELD_OUT = 500
EVAL_BATCH = 256
GRID_IMAGES = 16  # held-out originals and their reconstructions in reconstructions.png
GRID_SCALE = 3  # nearest-neighbour upscaling of small images in PNG grids
RECONSTRUCTIONS_FILE = "reconstructions.png"
VERSION_PACKAGES = ("clipforge", "torch", "safetensors", "pillow", "numpy")


class DecoderExistsError(FileExistsError):
    code = "decoder_exists"


class TooFewImagesError(ImageFolderError):
    code = "too_few_images"


@dataclass(frozen=True)
class TrainingConfig:
    """The first (reconstruction) stage of VAE training; the defaults trained the bundled shapes-vae."""

    steps: int = 1800  # optimiser steps: the budget (about 15 min at 0.5 s a step on one core, 32 px)
    minutes: float | None = None  # safety cap on wall time; None: none
    batch_size: int = 32
    lr: float = 2e-3  # Adam's peak rate
    final_lr_ratio: float = 0.02  # the cosine decays to this fraction of lr
    warmup_steps: int = 100  # linear warm-up from lr / warmup_steps
    edge_weight: float = 1.0  # weight of the L1 on pixel differences
    kl_weight: float = 2.5e-4  # per latent element, against the per-pixel L1: low, so reconstructions stay sharp
    clip_norm: float = 1.0  # gradient norm clip
    seed: int = 0  # initial weights (and, for a folder, the batch order and the held-out images)
    log_every: int = 50  # steps averaged into one history entry


@dataclass(frozen=True)
class TrainingProgress:
    step: int  # steps done
    total_steps: int
    loss: float  # the last step's total loss
    seconds: float  # since training began
    eta_seconds: float | None  # remaining, from the measured rate (and the time cap); None before the first step
    logged: dict | None = None  # the history entry this step closed (every log_every steps), else None


@dataclass
class TrainedVae:
    encoder: LatentEncoder  # eval mode, frozen
    decoder: LatentDecoder  # eval mode, frozen
    info: dict[str, object]  # steps_done, stopped_by ("steps", "time"), seconds, history


def kl_per_element(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) averaged over latent elements (nats)."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()


def edge_l1(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical pixel differences: shape edges and corners are few pixels,
    so plain L1 pays them little attention and run 1 drew stars as blobs."""
    dx = F.l1_loss(output.diff(dim=-1), target.diff(dim=-1))
    dy = F.l1_loss(output.diff(dim=-2), target.diff(dim=-2))
    return (dx + dy) / 2


def vae_losses(encoder: LatentEncoder, decoder: LatentDecoder, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel L1, edge L1 and KL per latent element, for one reparameterised sample of z."""
    mean, logvar = encoder(images)
    z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
    output = decoder(z)
    return F.l1_loss(output, images), edge_l1(output, images), kl_per_element(mean, logvar)


def learning_rate(config: TrainingConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (config.final_lr_ratio + (1 - config.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def eta_seconds(config: TrainingConfig, done: int, elapsed: float) -> float | None:
    if done == 0:
        return None
    remaining = elapsed / done * (config.steps - done)
    return remaining if config.minutes is None else min(remaining, max(0.0, config.minutes * 60 - elapsed))


def train_vae(
    architecture: DecoderConfig,
    config: TrainingConfig,
    batches: Callable[[int], torch.Tensor],
    *,
    device: torch.device | str = "cpu",
    on_progress: Callable[[TrainingProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> TrainedVae:
    """Train an encoder and decoder from scratch on ``batches(step)`` ((B, 3, S, S) in [0, 1]).

    ``on_progress`` after every step; ``should_cancel`` before every step (True raises ``Cancelled``).
    Returns both halves on the CPU, in eval mode and frozen. Seeded by ``config.seed``; the caller's global RNG state
    is left as it was.
    """
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _train_vae(architecture, config, batches, device, on_progress, should_cancel)


def _train_vae(
    architecture: DecoderConfig,
    config: TrainingConfig,
    batches: Callable[[int], torch.Tensor],
    device: torch.device,
    on_progress: Callable[[TrainingProgress], None] | None,
    should_cancel: Callable[[], bool] | None,
) -> TrainedVae:
    torch.manual_seed(config.seed)
    encoder, decoder = LatentEncoder(architecture).to(device).train(), LatentDecoder(architecture).to(device).train()
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    history: list[dict] = []
    start = time.monotonic()
    stopped_by, done = "steps", 0
    sums = {"l1": 0.0, "edge": 0.0, "kl": 0.0}
    for step in range(config.steps):
        if config.minutes is not None and time.monotonic() - start > config.minutes * 60:
            stopped_by = "time"
            break
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"cancelled after {step} of {config.steps} steps")
        images = batches(step).to(device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        l1, edge, kl = vae_losses(encoder, decoder, images)
        loss = l1 + config.edge_weight * edge + config.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.clip_norm)
        optimizer.step()
        for key, value in (("l1", l1), ("edge", edge), ("kl", kl)):
            sums[key] += value.item()
        done = step + 1
        elapsed = time.monotonic() - start
        logged = None
        if done % config.log_every == 0:
            logged = {
                "step": done,
                **{key: round(total / config.log_every, 5 if key != "kl" else 4) for key, total in sums.items()},
                "lr": float(f"{learning_rate(config, step):.3g}"),
                "seconds": round(elapsed, 1),
            }
            history.append(logged)
            sums = dict.fromkeys(sums, 0.0)
        if on_progress is not None:
            on_progress(TrainingProgress(done, config.steps, loss.item(), elapsed, eta_seconds(config, done, elapsed), logged))
    info = {"steps_done": done, "stopped_by": stopped_by, "seconds": round(time.monotonic() - start, 1), "history": history}
    return TrainedVae(encoder.cpu().eval().requires_grad_(False), decoder.cpu().eval().requires_grad_(False), info)


def save_decoder_files(decoder: LatentDecoder, out: Path, encoder: LatentEncoder | None = None) -> dict[str, int]:
    """config.json and fp16 weights.safetensors (and encoder.safetensors when given); returns the weights' bytes."""
    out.mkdir(parents=True, exist_ok=True)
    halves = {WEIGHTS_FILE: decoder} | ({ENCODER_FILE: encoder} if encoder is not None else {})
    for file_name, module in halves.items():
        state = {k: v.detach().cpu().half().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(out / file_name), metadata={"format": "pt", "decoder": decoder.config.name})
    (out / CONFIG_FILE).write_text(json.dumps(decoder.config.to_dict(), indent=2) + "\n")
    return {f"{file_name.removesuffix('.safetensors')}_bytes": (out / file_name).stat().st_size for file_name in halves}


@torch.no_grad()
def reconstruct(encoder: LatentEncoder, decoder: LatentDecoder, images: torch.Tensor, batch: int = EVAL_BATCH) -> torch.Tensor:
    """Encode (posterior mean) then decode, in batches."""
    return torch.cat([decoder(encoder(chunk)[0]) for chunk in images.split(batch)])


def save_grid(rows: list[torch.Tensor], path: Path, scale: int = GRID_SCALE) -> None:
    """One row per tensor of (n, 3, S, S) images, upscaled by ``scale`` (nearest), as a PNG."""
    grid = torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)  # (3, rows*S, n*S)
    array = (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(array).resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)


def architecture_for(name: str, image_size: int, description: str = "") -> DecoderConfig:
    """shapes-vae's architecture (an 8x8x8 latent, widths 32, 64, 128) for ``image_size``: one more level of
    ``MAX_WIDTH`` channels per doubling above 32 px, one fewer below, so the latent stays 512 codes."""
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"image size must be one of {', '.join(map(str, IMAGE_SIZES))}, not {image_size}")
    levels = int(math.log2(image_size // LATENT_SIZE)) + 1
    widths = tuple(min(32 * 2**level, MAX_WIDTH) for level in range(levels))
    return DecoderConfig(name=name, image_size=image_size, latent_size=LATENT_SIZE, widths=widths, description=description)


def held_out_split(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held out) indices: a seeded ``HELD_OUT_SHARE`` of the images (at least 1, at most ``MAX_HELD_OUT``)."""
    held = min(MAX_HELD_OUT, max(1, round(count * HELD_OUT_SHARE)))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[held:].sort().values, order[:held].sort().values


def reconstruction_error(encoder: LatentEncoder, decoder: LatentDecoder, pixels: torch.Tensor) -> dict[str, object]:
    """Mean pixel L1 and MSE of uint8 ``pixels`` against their reconstructions (encoder mean, then decoder)."""
    images = as_float(pixels)
    output = reconstruct(encoder, decoder, images)
    return {"images": len(images), "l1": round(float(F.l1_loss(output, images)), 5), "mse": round(float(F.mse_loss(output, images)), 5)}


def machine_card(device: torch.device) -> dict[str, object]:
    card: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        card["gpu"] = torch.cuda.get_device_name(device)
    return card


def versions_card() -> dict[str, str]:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {"python": sys.version.split()[0], **{package: version(package) for package in VERSION_PACKAGES}}


def replace_folder(staging: Path, out: Path) -> None:
    """Put ``staging`` at ``out`` by renames, so ``out`` is the old decoder or the new one, never a mixture."""
    if not out.exists():
        os.replace(staging, out)
        return
    retired = out.with_name(f".{out.name}-replaced-{os.getpid()}")
    os.replace(out, retired)
    os.replace(staging, out)
    shutil.rmtree(retired, ignore_errors=True)


def train_decoder_on_folder(
    images_folder: str | Path,
    out: str | Path,
    *,
    image_size: int = 32,
    config: TrainingConfig = TrainingConfig(),
    device: torch.device | str = "cpu",
    force: bool = False,
    on_image: Callable[[int, int], None] | None = None,
    on_progress: Callable[[TrainingProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, object]:
    """Train a decoder on every image under ``images_folder`` and write it to the folder ``out`` (its name is the
    decoder's): config.json, weights.safetensors, encoder.safetensors, latent_prior.safetensors (the default prior
    over the folder's images), card.json and reconstructions.png. Written whole or not at all: into a temporary
    folder beside ``out``, renamed into place at the end. Returns the card.
    """
    out = Path(out)
    if out.exists() and not force:
        raise DecoderExistsError(f"{out} already exists; pass --force to replace it")
    if out.exists() and not is_decoder_dir(out) and (out.is_file() or any(out.iterdir())):
        # --force replaces a decoder, never some other folder a path happened to name.
        raise DecoderExistsError(f"{out} exists and is not a decoder folder; it is not replaced, even with --force")
    device = torch.device(device)
    architecture = architecture_for(out.name, image_size, f"Decoder of a small VAE trained on the images under {images_folder}")
    images = load_image_folder(images_folder, image_size, on_image=on_image, should_cancel=should_cancel)
    if len(images) < MIN_IMAGES:
        raise TooFewImagesError(f"{len(images)} image under {images.folder}: a decoder needs at least {MIN_IMAGES}")
    train_index, held_index = held_out_split(len(images), config.seed)
    batches = ShuffledBatches(images.pixels[train_index], config.batch_size, config.seed)
    trained = train_vae(architecture, config, batches, device=device, on_progress=on_progress, should_cancel=should_cancel)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would follow the folder to its final name
        card = write_trained_decoder(trained, images, staging, config, device, train_index=train_index, held_index=held_index)
        replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return card


def write_trained_decoder(
    trained: TrainedVae,
    images: ImageFolder,
    staging: Path,
    config: TrainingConfig,
    device: torch.device,
    *,
    train_index: torch.Tensor,
    held_index: torch.Tensor,
) -> dict[str, object]:
    """The decoder's files in ``staging``; everything measured on the weights as shipped (fp16, reloaded)."""
    sizes = save_decoder_files(trained.decoder, staging, trained.encoder)
    decoder, encoder = load_decoder_from(staging), load_encoder_from(staging)
    held_out = images.pixels[held_index]
    train_sample = images.pixels[train_index[: len(held_index)]]
    grid = as_float(held_out[:GRID_IMAGES])
    save_grid([grid, reconstruct(encoder, decoder, grid)], staging / RECONSTRUCTIONS_FILE)
    prior = fit_folder_prior(encoder, images, staging / PRIOR_FILE, PriorFitConfig())
    write_json(staging / prior_card_file(FITTED_PRIOR), {"prior": FITTED_PRIOR, "decoder": decoder.config.name, **prior})
    card = {
        "decoder": decoder.config.name,
        "made_by": "clipforge decoders train",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "architecture": {
            **decoder.config.to_dict(),
            "decoder_parameters": sum(p.numel() for p in decoder.parameters()),
            "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
            **sizes,
            "weights_dtype": "float16",
        },
        "images": {**images.card(), "train": len(train_index), "held_out": len(held_index)},
        "training": {
            **asdict(config),
            "loss": "L1 + edge_weight * L1 of pixel differences + kl_weight * KL per latent element (reparameterised sample)",
            "data": "the folder's images less the held-out ones, in seeded epochs",
            **{k: v for k, v in trained.info.items() if k != "history"},
        },
        "reconstruction": {
            "measured_with": "encoder posterior mean, then decoder; fp16 weights as shipped; pixels in [0, 1]",
            "held_out": reconstruction_error(encoder, decoder, held_out),
            "train_sample": reconstruction_error(encoder, decoder, train_sample),
        },
        "latent_prior": {k: v for k, v in prior.items() if k != "images"} | {"images": prior["images"]["used"]},
        "machine": machine_card(device),
        "versions": versions_card(),
        "history": trained.info["history"],
    }
    write_json(staging / CARD_FILE, card)
    for path in staging.iterdir():
        path.chmod(0o644)  # safetensors writes 0600; a worker running as another user must read the decoder
    return card
