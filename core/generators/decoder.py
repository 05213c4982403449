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

Only the decoder is bundled (``config.json`` and fp16 ``weights.safetensors``); the encoder
class lives here so that the training script and the tests can build the whole VAE.

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
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from core.generators.base import GENERATORS, ImageGenerator

BUNDLED_DIR = Path(__file__).parent / "bundled"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
PRIOR_FILE = "latent_prior.safetensors"
DEFAULT_DECODER = "shapes-vae"
STANDARD_PRIOR = "standard"  # N(0, I); any other prior name is a fitted file in the bundle (see prior_file)
PRIOR_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")

GROUP_NORM_GROUPS = 8  # GroupNorm, not BatchNorm: a decoded image must not depend on the rest of its batch
LOGVAR_CLAMP = (-20.0, 10.0)  # keeps exp(logvar) finite early in training


class DecoderError(RuntimeError):
    """A decoder that cannot be found or loaded; ``code`` is machine-readable."""

    code = "decoder_unavailable"


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

    def __post_init__(self) -> None:
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
    return BUNDLED_DIR / name


def load_decoder_from(folder: str | Path) -> LatentDecoder:
    """A decoder from ``folder/{config.json,weights.safetensors}``: float32, eval mode, frozen. Not cached."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        known = sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / WEIGHTS_FILE).is_file()) if BUNDLED_DIR.is_dir() else []
        raise DecoderError(f"no decoder at {folder} (needs {CONFIG_FILE} and {WEIGHTS_FILE}); bundled: {', '.join(known) or 'none'}")
    # Random initialisation would draw from torch's global RNG, so a first (uncached) load inside a seeded
    # job would shift every later draw; the weights are overwritten anyway.
    with torch.random.fork_rng(devices=[]):
        decoder = LatentDecoder(DecoderConfig.from_file(config_path))
    state = {k: v.float() for k, v in load_file(str(weights_path)).items()}  # stored fp16 to keep the bundle small
    decoder.load_state_dict(state)
    return decoder.eval().requires_grad_(False)


@functools.lru_cache(maxsize=8)
def _cached_decoder(name: str) -> LatentDecoder:
    return load_decoder_from(decoder_dir(name))


def load_decoder(name: str = DEFAULT_DECODER) -> LatentDecoder:
    """The bundled decoder ``name``: float32, eval mode, frozen.

    Files are read once per process (cached by name); every call returns its own deep copy, so
    a caller may ``.to(device)`` or modify it without affecting other callers.
    """
    return copy.deepcopy(_cached_decoder(name))


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
    """``fitted`` is the bundle's default prior file; any other name a variant beside it."""
    return PRIOR_FILE if prior == "fitted" else f"latent_prior-{prior}.safetensors"


def load_latent_prior_from(folder: str | Path, prior: str = "fitted") -> LatentPrior:
    path = Path(folder) / prior_file(prior)
    if not path.is_file():
        raise DecoderError(f"no latent prior {prior!r} at {path}; use prior='standard' or fit one (bench/train_decoder.py --fit-prior)")
    tensors = {k: v.float() for k, v in load_file(str(path)).items()}
    means = tensors["means"] if "means" in tensors else tensors["mean"][None]
    weights = tensors.get("weights", torch.full((len(means),), 1.0 / len(means)))
    return LatentPrior(means, tensors["scale_tril"], weights / weights.sum())


@functools.lru_cache(maxsize=8)
def load_latent_prior(name: str = DEFAULT_DECODER, prior: str = "fitted") -> LatentPrior:
    """The bundled decoder's fitted prior (read once per process; tensors are never modified in place)."""
    return load_latent_prior_from(decoder_dir(name), prior)


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
    prior: str = "fitted",
) -> DecoderGenerator:
    """Codes ``~ N(0, init_scale**2 I)`` for the bundled ``decoder``; ``init_scale`` below 1 starts nearer the mean image.

    ``prior``: "fitted" (the bundle's latent prior, see the module docstring), another name for a
    variant file beside it (``latent_prior-<name>.safetensors``), or "standard" (N(0, I)).
    """
    if not math.isfinite(init_scale) or init_scale < 0:
        raise ValueError(f"init_scale must be a finite number >= 0, got {init_scale}")
    if not PRIOR_NAME_PATTERN.match(prior):
        raise ValueError(f"prior must be 'fitted', 'standard' or a prior file's name, got {prior!r}")
    latent_prior = None if prior == STANDARD_PRIOR else load_latent_prior(decoder, prior)
    return DecoderGenerator(n, image_size, load_decoder(decoder), rng=rng, init_scale=init_scale, prior=latent_prior).to(device)
