"""A pretrained latent decoder as the image prior for inversion (the part VQGAN plays in the paper).

The bundled ``shapes-vae`` is the decoder half of a small convolutional VAE with a *spatial*
latent map (8 channels at 8x8 for 32 px images), trained on unlabelled shapes-world images by
``bench/train_decoder.py``. Inversion optimises the latents ``z`` of the ``decoder`` generator so
that ``teacher(decoder(z))`` matches a text embedding; the decoder keeps every image on the
manifold of images it learnt to draw (sharp shapes over backgrounds), which pixel or Fourier
parameterisations do not.

Why a VAE with a low KL weight rather than a VQ-VAE: its decoder is a smooth function of a
continuous ``z`` (no piecewise-constant quantiser for straight-through gradients to step
over), and the KL term keeps the aggregate posterior at about unit scale, so ``z ~ N(0, I)``
is a meaningful start for gradient descent. The bundle's ``card.json`` records the
measurements behind this (reconstruction accuracy of the teacher, latent statistics, and how
well gradient descent from a random ``z`` fits held-out images).

The bundled ``shapes-vae`` ships only its decoder (``config.json`` and fp16 ``weights.safetensors``);
its encoder is kept out of the bundle, under ``runs/``. A decoder made by ``clipforge decoders train``
(``core.generators.training``) ships its encoder too (``encoder.safetensors``), so that
``clipforge priors build`` (``core.generators.priors``) can fit a prior over any folder of images later.

Where a decoder is found, by name (``find_decoder_dir``): bundled (``core/generators/bundled/<name>/``)
first, then the cache directory (``<cache>/decoders/<name>/``, where ``clipforge decoders train`` writes);
a name with a ``/`` is a path to a decoder folder. A prior ``P`` of that decoder is the file
``latent_prior-P.safetensors`` (``fitted``: ``latent_prior.safetensors``) in the decoder's folder, or in
``<cache>/decoders/<name>/`` for a bundled decoder, whose folder is part of the installed package.

The latent prior. Measured: ``z ~ N(0, I)`` decodes to multicoloured speckle, because the
aggregate posterior is far from isotropic (neighbouring latent cells are strongly correlated:
uniform backgrounds, one object). The bundle therefore also carries ``latent_prior.safetensors``,
a Gaussian mixture over the encoder's posterior means of unlabelled world images (the data the
VAE trained on, no labels). One full-covariance Gaussian (``latent_prior-gaussian``) was the
first fit: its samples are an object-like blob over a background, and a student distilled on
them reaches 0.33 on val. The aggregate posterior is multi-modal (one object of a discrete shape
over a background), so the default is now a kernel density estimate: one component per code of
8,192 unlabelled images with a shared, shrunken covariance; its samples decode to clean scenes
and a student distilled on them reaches 0.75 (bench/results/experiments.md, issue 10). The
generator optimises whitened codes ``u`` and decodes ``z = means[c] + L u``.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from core.generators.base import GENERATORS, ImageGenerator
from core.generators.diffusers_decoders import DIFFUSERS_SUBDIR, DiffusersDecoder, DiffusersEncoder, load_model

BUNDLED_DIR = Path(__file__).parent / "bundled"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
ENCODER_FILE = "encoder.safetensors"  # a trained decoder's encoder: what a prior over new images needs
CARD_FILE = "card.json"
PRIOR_FILE = "latent_prior.safetensors"
PRIOR_CARD_SUFFIX = ".card.json"  # a prior's card beside it: latent_prior-P.card.json
CACHE_SUBDIR = "decoders"  # <cache>/decoders/<name>/
DEFAULT_DECODER = "shapes-vae"
FITTED_PRIOR = "fitted"  # the decoder's default prior, latent_prior.safetensors
STANDARD_PRIOR = "standard"  # N(0, I); any other prior name is a fitted file beside the decoder (see prior_file)
PRIOR_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")  # the spec's synthesis.prior pattern
DECODER_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")  # a folder name; the spec allows 100 characters

GROUP_NORM_GROUPS = 8  # GroupNorm, not BatchNorm: a decoded image must not depend on the rest of its batch
LOGVAR_CLAMP = (-20.0, 10.0)  # keeps exp(logvar) finite early in training


class DecoderError(RuntimeError):
    """A decoder that cannot be found or loaded; ``code`` is machine-readable."""

    code = "decoder_unavailable"


class UnknownDecoderError(DecoderError):
    code = "unknown_decoder"


class UnknownPriorError(DecoderError):
    code = "unknown_prior"


class DecoderHasNoEncoderError(DecoderError):
    code = "decoder_has_no_encoder"


@dataclass(frozen=True)
class DecoderConfig:
    """Architecture of a latent VAE; ``widths`` go from the image resolution down to the latent one."""

    name: str = DEFAULT_DECODER
    image_size: int = 32  # native output side in pixels
    latent_channels: int = 8
    latent_size: int = 8  # latent map side; image_size / latent_size must be 2 ** (len(widths) - 1)
    widths: tuple[int, ...] = (32, 64, 128)
    blocks_per_level: int = 1  # residual blocks per resolution (decoder and encoder)
    description: str = ""
    # "vae": this module's VAE (widths, blocks_per_level); else a diffusers family (core.generators.diffusers_decoders),
    # whose architecture is the saved model's own config and whose latent shape is the fields above.
    family: str = "vae"

    def __post_init__(self) -> None:
        if self.family != "vae":
            return
        factor = 2 ** (len(self.widths) - 1)
        if self.latent_size * factor != self.image_size:
            raise ValueError(f"image_size {self.image_size} != latent_size {self.latent_size} * 2**{len(self.widths) - 1}")
        if any(w % GROUP_NORM_GROUPS for w in self.widths):
            raise ValueError(f"widths {self.widths} must be multiples of {GROUP_NORM_GROUPS}")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)

    @classmethod
    def from_dict(cls, raw: dict) -> DecoderConfig:
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        if "widths" in known:
            known["widths"] = tuple(known["widths"])
        return cls(**known)

    @classmethod
    def from_file(cls, path: str | Path) -> DecoderConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths)}


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUP_NORM_GROUPS, channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class LatentDecoder(nn.Module):
    """(B, C, h, w) latents -> (B, 3, S, S) images in [0, 1] (sigmoid output: in range by construction)."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        widths = list(reversed(config.widths))  # latent resolution first
        layers: list[nn.Module] = [nn.Conv2d(config.latent_channels, widths[0], 3, padding=1)]
        for level, width in enumerate(widths):
            if level > 0:
                # A 1x1 conv to the narrower width, then nearest upsampling: no transposed-conv checkerboards,
                # and the spatial work is left to the residual blocks (a 3x3 conv here cost 40% of the decoder's time).
                layers += [nn.Conv2d(widths[level - 1], width, 1), nn.Upsample(scale_factor=2, mode="nearest")]
            layers += [ResBlock(width) for _ in range(config.blocks_per_level)]
        layers += [_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z))


class LatentEncoder(nn.Module):
    """(B, 3, S, S) images in [0, 1] -> posterior mean and log-variance, each (B, C, h, w). Training only."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        widths = list(config.widths)
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        for level, width in enumerate(widths):
            if level > 0:
                layers.append(nn.Conv2d(widths[level - 1], width, 3, stride=2, padding=1))
                # No blocks at full resolution: the encoder only trains, so it is kept cheap.
                layers += [ResBlock(width) for _ in range(config.blocks_per_level)]
        layers += [_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 2 * config.latent_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.net(2 * images - 1).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_CLAMP)


def decoder_dir(name: str) -> Path:
    """The folder a bundled decoder ``name`` has (or would have)."""
    return BUNDLED_DIR / name


def cache_decoders_dir(cache_dir: str | Path | None = None) -> Path:
    """``<cache>/decoders``: where ``clipforge decoders train`` writes decoders by name."""
    if cache_dir is not None:
        return Path(cache_dir) / CACHE_SUBDIR
    from core.teachers.sources import default_cache_dir  # the one definition of the cache directory

    return default_cache_dir() / CACHE_SUBDIR


def weights_path(folder: Path) -> Path:
    """The file whose change means the decoder was rebuilt: clipforge's weights, or a diffusers model's folder."""
    diffusers_folder = folder / DIFFUSERS_SUBDIR
    return diffusers_folder if diffusers_folder.is_dir() else folder / WEIGHTS_FILE


def is_decoder_dir(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() and weights_path(folder).exists()


def is_path_reference(name: str) -> bool:
    """A decoder named by its folder's path rather than by a name."""
    return "/" in name or os.sep in name or name.startswith((".", "~"))


def bundled_decoder_names() -> list[str]:
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if is_decoder_dir(p)) if BUNDLED_DIR.is_dir() else []


def find_decoder_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """The folder of decoder ``name``: bundled first (a cached one cannot shadow it), then ``<cache>/decoders/<name>``;
    a path names its folder directly."""
    if is_path_reference(name):
        folder = Path(name).expanduser()
        if is_decoder_dir(folder):
            return folder
        raise UnknownDecoderError(f"no decoder at {folder} (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    if DECODER_NAME_PATTERN.match(name) and is_decoder_dir(BUNDLED_DIR / name):
        return BUNDLED_DIR / name
    cached = cache_decoders_dir(cache_dir)
    if DECODER_NAME_PATTERN.match(name) and is_decoder_dir(cached / name):  # anything else is no folder name
        return cached / name
    cached_names = sorted(p.name for p in cached.iterdir() if is_decoder_dir(p)) if cached.is_dir() else []
    raise UnknownDecoderError(
        f"unknown decoder {name!r}; bundled: {', '.join(bundled_decoder_names()) or 'none'}; in {cached}: "
        f"{', '.join(cached_names) or 'none'} (train one with `clipforge decoders train --images DIR --out {name}`)"
    )


def _file_stamp(path: Path) -> tuple[int, int]:
    """Modification time and size: a cache key that changes when a decoder or prior is rebuilt in place."""
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def _load_state(module: nn.Module, path: Path) -> None:
    module.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})  # stored fp16 to keep files small


def load_decoder_from(folder: str | Path) -> nn.Module:
    """A decoder from ``folder/{config.json,weights.safetensors}`` (or a diffusers family's model folder): float32,
    eval mode, frozen; ``decoder.config`` is its DecoderConfig. Not cached."""
    folder = Path(folder)
    if not is_decoder_dir(folder):
        bundled = ", ".join(bundled_decoder_names()) or "none"
        raise DecoderError(f"no decoder at {folder} (needs {CONFIG_FILE} and {WEIGHTS_FILE}); bundled: {bundled}")
    config = DecoderConfig.from_file(folder / CONFIG_FILE)
    if config.family != "vae":
        return DiffusersDecoder(load_model(folder, config.family), config).eval()
    # Random initialisation would draw from torch's global RNG, so a first (uncached) load inside a seeded
    # job would shift every later draw; the weights are overwritten anyway.
    with torch.random.fork_rng(devices=[]):
        decoder = LatentDecoder(DecoderConfig.from_file(folder / CONFIG_FILE))
    _load_state(decoder, folder / WEIGHTS_FILE)
    return decoder.eval().requires_grad_(False)


def load_encoder_file(path: str | Path, config: DecoderConfig) -> LatentEncoder:
    """An encoder from its weights file (fp16 or fp32): float32, eval mode, frozen."""
    with torch.random.fork_rng(devices=[]):
        encoder = LatentEncoder(config)
    _load_state(encoder, Path(path))
    return encoder.eval().requires_grad_(False)


def load_encoder_from(folder: str | Path) -> nn.Module:
    """The encoder a decoder folder ships (``encoder.safetensors``); ``decoder_has_no_encoder`` when it has none."""
    folder = Path(folder)
    config = DecoderConfig.from_file(folder / CONFIG_FILE)
    if config.family != "vae":  # a diffusers autoencoder keeps its encoder
        return DiffusersEncoder(load_model(folder, config.family), config).eval()
    path = folder / ENCODER_FILE
    if not path.is_file():
        raise DecoderHasNoEncoderError(
            f"the decoder at {folder} ships no encoder ({ENCODER_FILE}), so it cannot encode new images into a prior; "
            "decoders made by `clipforge decoders train` ship one"
        )
    return load_encoder_file(path, config)


@functools.lru_cache(maxsize=8)
def _cached_decoder(folder: Path, stamp: tuple[int, int]) -> nn.Module:
    return load_decoder_from(folder)


def load_decoder(name: str = DEFAULT_DECODER, cache_dir: str | Path | None = None) -> nn.Module:
    """Decoder ``name`` (bundled, cached, or a folder's path; see ``find_decoder_dir``): float32, eval mode, frozen.

    Files are read once per process (cached by folder, and read again when rebuilt); every call returns its own
    deep copy, so a caller may ``.to(device)`` or modify it without affecting other callers.
    """
    folder = find_decoder_dir(name, cache_dir)
    return copy.deepcopy(_cached_decoder(folder, _file_stamp(weights_path(folder))))


@dataclass(frozen=True)
class LatentPrior:
    """A Gaussian mixture over flattened latents with one shared covariance.

    Pick component ``c`` with probability ``weights[c]``, then ``z = means[c] + scale_tril @ u`` with
    ``u ~ N(0, I)``. One component is the single fitted Gaussian. Why a mixture: the aggregate
    posterior of scenes (one object of a discrete shape over a background) is multi-modal, and one
    Gaussian's samples decode to blends of shapes and colour soup.
    """

    means: torch.Tensor  # (K, D) component centres
    scale_tril: torch.Tensor  # (D, D) lower-triangular Cholesky factor of the shared within-component covariance
    weights: torch.Tensor | None = None  # (K,) mixing probabilities, summing to 1; None: equal

    def __repr__(self) -> str:  # short: a synthesis config holding one is printed in logs
        return f"LatentPrior(components={self.components}, dimensions={self.dimensions})"

    def __post_init__(self) -> None:
        if self.means.dim() == 1:  # a single Gaussian given by its mean
            object.__setattr__(self, "means", self.means[None])
        if self.weights is None:
            object.__setattr__(self, "weights", torch.full((self.means.shape[0],), 1.0 / self.means.shape[0]))
        if self.weights.numel() != self.means.shape[0]:
            raise DecoderError(f"latent prior has {self.means.shape[0]} components but {self.weights.numel()} weights")

    @property
    def dimensions(self) -> int:
        return int(self.means.shape[1])

    @property
    def components(self) -> int:
        return int(self.means.shape[0])


def prior_file(prior: str) -> str:
    """``fitted`` is the decoder's default prior file; any other name a variant beside it."""
    return PRIOR_FILE if prior == FITTED_PRIOR else f"latent_prior-{prior}.safetensors"


def prior_card_file(prior: str) -> str:
    return prior_file(prior).removesuffix(".safetensors") + PRIOR_CARD_SUFFIX


def prior_name_of(file_name: str) -> str | None:
    """The prior name a file in a decoder folder stands for (the inverse of ``prior_file``), or None."""
    if file_name == PRIOR_FILE:
        return FITTED_PRIOR
    if file_name.startswith("latent_prior-") and file_name.endswith(".safetensors"):
        return file_name.removeprefix("latent_prior-").removesuffix(".safetensors")
    return None


def prior_dirs(name: str, cache_dir: str | Path | None = None) -> list[Path]:
    """Where the priors of decoder ``name`` are looked for, in order: its own folder, then ``<cache>/decoders/<name>``
    (priors a user built for a bundled decoder, whose own folder belongs to the installed package)."""
    own = find_decoder_dir(name, cache_dir)
    folders = [own]
    if not is_path_reference(name):
        overlay = cache_decoders_dir(cache_dir) / name
        if overlay.resolve() != own.resolve():
            folders.append(overlay)
    return folders


def writable_prior_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where a new prior of decoder ``name`` is written: beside it, or for a bundled decoder ``<cache>/decoders/<name>``."""
    return prior_dirs(name, cache_dir)[-1]


def load_latent_prior_from(folder: str | Path, prior: str = FITTED_PRIOR) -> LatentPrior:
    path = Path(folder) / prior_file(prior)
    if not path.is_file():
        raise UnknownPriorError(
            f"no latent prior {prior!r} at {path}; use prior='standard' or build one "
            "(`clipforge priors build`; a bundle's: bench/train_decoder.py --fit-prior)"
        )
    tensors = {k: v.float() for k, v in load_file(str(path)).items()}
    means = tensors["means"] if "means" in tensors else tensors["mean"][None]
    weights = tensors.get("weights", torch.full((len(means),), 1.0 / len(means)))
    return LatentPrior(means, tensors["scale_tril"], weights / weights.sum())


def find_prior_file(name: str, prior: str = FITTED_PRIOR, cache_dir: str | Path | None = None) -> Path:
    """The file of prior ``prior`` of decoder ``name`` (see ``prior_dirs``)."""
    folders = prior_dirs(name, cache_dir)
    for folder in folders:
        if (folder / prior_file(prior)).is_file():
            return folder / prior_file(prior)
    raise UnknownPriorError(
        f"decoder {name!r} has no latent prior {prior!r} (no {prior_file(prior)} in {' or '.join(str(f) for f in folders)}); "
        f"use prior 'standard' or build it: clipforge priors build --decoder {name} --images DIR --name {prior}"
    )


@functools.lru_cache(maxsize=8)
def _cached_prior(path: Path, stamp: tuple[int, int]) -> LatentPrior:
    return load_latent_prior_from(path.parent, prior_name_of(path.name) or FITTED_PRIOR)


def load_latent_prior(name: str = DEFAULT_DECODER, prior: str = FITTED_PRIOR, cache_dir: str | Path | None = None) -> LatentPrior:
    """Prior ``prior`` of decoder ``name`` (read once per process and again when rebuilt; tensors are never modified
    in place)."""
    path = find_prior_file(name, prior, cache_dir)
    return _cached_prior(path, _file_stamp(path))


@dataclass(frozen=True)
class DecoderInfo:
    """What ``clipforge decoders list`` shows of one decoder."""

    name: str
    source: str  # "bundled" or "cached"
    path: str
    image_size: int
    latent_shape: tuple[int, int, int]
    has_encoder: bool  # whether priors over new images can be built for it
    priors: tuple[str, ...]  # names a job can give as synthesis.prior (besides "standard")
    description: str
    summary: dict[str, object] = field(default_factory=dict)  # from its card: what it was trained on, how long, how well


def card_summary(card: dict) -> dict[str, object]:
    """The few card fields worth a line: the images (folder and count, or how they were made), steps, seconds and the
    held-out reconstruction error."""
    images, training = card.get("images") or {}, card.get("training") or {}
    held_out = (card.get("reconstruction") or {}).get("held_out") or {}
    summary = {
        "images_folder": images.get("folder"),
        "images": images.get("count"),
        "data": training.get("data") if not images else None,
        "steps": training.get("steps_done"),
        "seconds": training.get("seconds"),
        "held_out_l1": held_out.get("l1"),
    }
    return {k: v for k, v in summary.items() if v is not None}


def list_decoders(cache_dir: str | Path | None = None) -> list[DecoderInfo]:
    """Bundled decoders and those in ``<cache>/decoders``, by name (a bundled name hides a cached folder of that name)."""
    cached = cache_decoders_dir(cache_dir)
    folders = {p.name: (p, "cached") for p in (sorted(cached.iterdir()) if cached.is_dir() else []) if is_decoder_dir(p)}
    folders.update({name: (BUNDLED_DIR / name, "bundled") for name in bundled_decoder_names()})
    infos = []
    for name, (folder, source) in sorted(folders.items()):
        config = DecoderConfig.from_file(folder / CONFIG_FILE)
        card_path = folder / CARD_FILE
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        priors = {prior_name_of(p.name) for d in prior_dirs(name, cache_dir) if d.is_dir() for p in d.iterdir()} - {None}
        infos.append(
            DecoderInfo(
                name=name,
                source=source,
                path=str(folder),
                image_size=config.image_size,
                latent_shape=config.latent_shape,
                has_encoder=config.family != "vae" or (folder / ENCODER_FILE).is_file(),
                priors=tuple(sorted(priors, key=lambda p: (p != FITTED_PRIOR, p))),
                description=config.description,
                summary=card_summary(card),
            )
        )
    return infos


def _parameters_to_buffers(module: nn.Module) -> None:
    """Re-register every parameter of ``module`` as a buffer: it still follows ``.to()`` and
    ``state_dict()``, but no longer appears in ``parameters()``, so an optimiser built from
    ``generator.parameters()`` can only ever see the latents."""
    for sub in module.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, param.detach())


class DecoderGenerator(ImageGenerator):
    """``n`` images as latent codes (the only parameter) decoded by a frozen pretrained decoder.

    Without a prior the codes are the latents ``z`` themselves; with a :class:`LatentPrior` they
    are whitened codes ``u`` (same shape) and ``z = means[c] + L u``, with each image's mixture
    component ``c`` drawn once at initialisation (a buffer: optimisation moves ``u`` only).
    """

    def __init__(
        self,
        n: int,
        image_size: int,
        decoder: LatentDecoder,
        *,
        rng: torch.Generator,
        init_scale: float = 1.0,
        prior: LatentPrior | None = None,
    ) -> None:
        super().__init__(n, image_size)
        _parameters_to_buffers(decoder)
        self.decoder = decoder.eval()
        shape = (n, *decoder.config.latent_shape)
        self.whitened = prior is not None
        # Drawn on the rng's own device, so the same seed gives the same z whatever device it moves to.
        z = torch.randn(shape, generator=rng, device=rng.device) * init_scale
        if prior is not None:
            dimensions = math.prod(decoder.config.latent_shape)
            if prior.dimensions != dimensions:
                raise DecoderError(f"latent prior has {prior.dimensions} dimensions, the decoder {dimensions}")
            if prior.components > 1:
                component = torch.multinomial(prior.weights.to(rng.device), n, replacement=True, generator=rng).cpu()
            else:
                component = torch.zeros(n, dtype=torch.long)
            # Shared with the cached prior, not copied: a kernel density's means are 16 MB, and online synthesis
            # builds a generator per batch. Neither tensor is ever modified in place.
            self.register_buffer("prior_means", prior.means)
            self.register_buffer("prior_scale_tril", prior.scale_tril)
            self.register_buffer("component", component)
            self.per_image_buffers = ("component",)
        self.z = nn.Parameter(z)

    def latents(self) -> torch.Tensor:
        if not self.whitened:
            return self.z
        flat = self.prior_means[self.component] + self.z.flatten(1) @ self.prior_scale_tril.T
        return flat.view_as(self.z)

    def prior_loss(self) -> torch.Tensor:
        """Negative log-likelihood of the codes under their component, per element (about 0.5 at a prior sample)."""
        return 0.5 * self.z.square().mean() if self.whitened else self.z.new_zeros(())

    def train(self, mode: bool = True) -> DecoderGenerator:
        super().train(mode)
        self.decoder.eval()  # frozen: stays in eval mode whatever the caller asks of the generator
        return self

    def forward(self) -> torch.Tensor:
        images = self.decoder(self.latents())
        native = images.shape[-1]
        if native != self.image_size:
            # Antialias only when shrinking; bilinear keeps values within [0, 1].
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=self.image_size < native
            )
        return images.clamp(0.0, 1.0)


@GENERATORS.register("decoder")
def decoder_generator(
    n: int,
    image_size: int,
    *,
    rng: torch.Generator,
    device: torch.device,
    decoder: str = DEFAULT_DECODER,
    init_scale: float = 1.0,
    prior: str | LatentPrior = FITTED_PRIOR,
    cache_dir: str | Path | None = None,
) -> DecoderGenerator:
    """Codes ``~ N(0, init_scale**2 I)`` for ``decoder``; ``init_scale`` below 1 starts nearer the mean image.

    ``decoder``: a bundled or cached decoder's name, or a decoder folder's path (``find_decoder_dir``; ``cache_dir``
    defaults to ``~/.cache/clipforge``). ``prior``: "fitted" (the decoder's default latent prior, see the module
    docstring), another name for a variant file (``latent_prior-<name>.safetensors``, see ``prior_dirs``), or
    "standard" (N(0, I)), or a :class:`LatentPrior` fitted in memory (a job's image pool, core.pools).
    """
    if not math.isfinite(init_scale) or init_scale < 0:
        raise ValueError(f"init_scale must be a finite number >= 0, got {init_scale}")
    if isinstance(prior, LatentPrior):
        latent_prior = prior
    elif not PRIOR_NAME_PATTERN.match(prior):
        raise ValueError(f"prior must be 'fitted', 'standard' or a prior file's name, got {prior!r}")
    else:
        latent_prior = None if prior == STANDARD_PRIOR else load_latent_prior(decoder, prior, cache_dir)
    return DecoderGenerator(n, image_size, load_decoder(decoder, cache_dir), rng=rng, init_scale=init_scale, prior=latent_prior).to(device)
