"""The shapes world: a deterministic, seedable, batched torch renderer.

Every image is one coloured shape drawn with signed distance functions (anti-aliased by
coverage), over one of several backgrounds, in one of several rendering styles. Most
pre-training images also contain a distractor, a smiley-face glyph that captions seldom
mention: it plays the part of the human faces that web-trained CLIP's BatchNorm statistics
encode, so that BatchNorm-matching inversion can be shown to fail for the same reason.

All randomness comes from an explicit ``torch.Generator``: the same seed and batch size give
the same pixels on the same machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "hexagon",
    "cross",
    "heart",
    "ring",
)

# Saturated hues: they stay distinguishable from the low-saturation backgrounds.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "orange": (0.98, 0.55, 0.05),
    "yellow": (0.95, 0.90, 0.10),
    "green": (0.10, 0.75, 0.15),
    "cyan": (0.10, 0.85, 0.90),
    "blue": (0.10, 0.20, 0.90),
    "purple": (0.55, 0.10, 0.80),
    "pink": (0.98, 0.45, 0.75),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

BACKGROUNDS: tuple[str, ...] = ("plain", "noise", "stripes", "gradient", "checker")
STYLES: tuple[str, ...] = ("filled", "outline", "blurred", "noisy")

# The distractor glyph: a peach face with dark eyes and mouth, unlike any task colour.
DISTRACTOR_FACE_RGB = (1.0, 0.80, 0.62)
DISTRACTOR_INK_RGB = (0.12, 0.08, 0.05)

DEFAULT_IMAGE_SIZE = 32


@dataclass(frozen=True)
class Scenes:
    """Factors of a batch of scenes; every field is a tensor whose first dimension is the batch."""

    shape: torch.Tensor  # (B,) long, index into SHAPES
    colour: torch.Tensor  # (B,) long, index into COLOUR_NAMES
    rgb: torch.Tensor  # (B, 3) shape colour after per-image jitter
    size: torch.Tensor  # (B,) shape radius as a fraction of the image side
    centre: torch.Tensor  # (B, 2) shape centre (x, y) as fractions of the image side
    rotation: torch.Tensor  # (B,) radians
    background: torch.Tensor  # (B,) long, index into BACKGROUNDS
    tones: torch.Tensor  # (B, 2, 3) the background's two tones
    pattern: torch.Tensor  # (B, 2) background pattern angle (radians) and frequency (cycles)
    style: torch.Tensor  # (B,) long, index into STYLES
    has_distractor: torch.Tensor  # (B,) bool
    distractor_centre: torch.Tensor  # (B, 2) glyph centre as fractions of the image side
    distractor_size: torch.Tensor  # (B,) glyph radius as a fraction of the image side

    def __len__(self) -> int:
        return int(self.shape.shape[0])

    def select(self, index: torch.Tensor) -> Scenes:
        return Scenes(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def _choice(n: int, options: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return options[torch.randint(len(options), (n,), generator=g)]


def _as_index_tensor(values: list[int] | tuple[int, ...] | torch.Tensor | None, count: int) -> torch.Tensor:
    if values is None:
        return torch.arange(count)
    return torch.as_tensor(values, dtype=torch.long)


def sample_scenes(
    n: int,
    generator: torch.Generator,
    *,
    shapes: torch.Tensor | list[int] | None = None,
    colours: torch.Tensor | list[int] | None = None,
    styles: torch.Tensor | list[int] | None = None,
    backgrounds: torch.Tensor | list[int] | None = None,
    distractor_prob: float = 0.0,
) -> Scenes:
    """Draw ``n`` random scenes.

    ``shapes`` and ``colours`` may be a pool to draw from or, with length ``n``, are still
    treated as a pool; pass per-image factors through ``Scenes`` fields via ``with_factors``.
    """
    g = generator
    shape = _choice(n, _as_index_tensor(shapes, len(SHAPES)), g)
    colour = _choice(n, _as_index_tensor(colours, len(COLOURS)), g)
    return _complete_scenes(shape, colour, g, styles=styles, backgrounds=backgrounds, distractor_prob=distractor_prob)


def scenes_for(
    shape: torch.Tensor,
    colour: torch.Tensor,
    generator: torch.Generator,
    *,
    distractor_prob: float = 0.0,
) -> Scenes:
    """Scenes with the given per-image shape and colour indices and random nuisance factors."""
    return _complete_scenes(shape.long(), colour.long(), generator, distractor_prob=distractor_prob)


def _complete_scenes(
    shape: torch.Tensor,
    colour: torch.Tensor,
    g: torch.Generator,
    *,
    styles: torch.Tensor | list[int] | None = None,
    backgrounds: torch.Tensor | list[int] | None = None,
    distractor_prob: float,
) -> Scenes:
    n = int(shape.shape[0])
    palette = torch.tensor(list(COLOURS.values()))
    rgb = (palette[colour] + 0.06 * torch.randn(n, 3, generator=g)).clamp(0.0, 1.0)

    has_distractor = torch.rand(n, generator=g) < distractor_prob
    size = _uniform(n, 0.20, 0.32, g)
    # With a distractor the shape sits on one side and the glyph in the opposite corner,
    # so the glyph never hides the shape (the shape is drawn on top anyway).
    corner = torch.randint(4, (n,), generator=g)
    corner_xy = torch.stack([(corner % 2).float(), (corner // 2).float()], dim=1)  # 0 or 1
    distractor_size = _uniform(n, 0.12, 0.16, g)
    margin = distractor_size + 0.03
    distractor_centre = torch.where(corner_xy > 0.5, 1.0 - margin[:, None], margin[:, None]) + 0.02 * torch.randn(n, 2, generator=g)
    free_centre = 0.5 + (0.5 - size[:, None] - 0.02) * (2 * torch.rand(n, 2, generator=g) - 1) * 0.6
    away_centre = (1.0 - corner_xy) * 0.15 + 0.35 + 0.08 * (2 * torch.rand(n, 2, generator=g) - 1)
    centre = torch.where(has_distractor[:, None], away_centre, free_centre)

    rotation = _uniform(n, 0.0, 2 * math.pi, g)
    background = _choice(n, _as_index_tensor(backgrounds, len(BACKGROUNDS)), g)
    style = _choice(n, _as_index_tensor(styles, len(STYLES)), g)
    # Low-saturation tones: a grey level with a slight tint, two of them for patterns.
    grey = _uniform(2 * n, 0.15, 0.85, g).view(n, 2, 1)
    tint = 0.06 * torch.randn(n, 2, 3, generator=g)
    tones = (grey + tint).clamp(0.0, 1.0)
    # Patterned backgrounds need contrast between their two tones.
    tones[:, 1] = torch.where(
        (tones[:, 0].mean(1, keepdim=True) - tones[:, 1].mean(1, keepdim=True)).abs() < 0.2,
        (1.0 - tones[:, 0]).clamp(0.1, 0.9),
        tones[:, 1],
    )
    pattern = torch.stack([_uniform(n, 0.0, math.pi, g), _uniform(n, 2.5, 5.0, g)], dim=1)
    return Scenes(
        shape=shape,
        colour=colour,
        rgb=rgb,
        size=size,
        centre=centre,
        rotation=rotation,
        background=background,
        tones=tones,
        pattern=pattern,
        style=style,
        has_distractor=has_distractor,
        distractor_centre=distractor_centre,
        distractor_size=distractor_size,
    )


# --------------------------------------------------------------------------------------
# Signed distance functions in a unit frame (the shape's radius is 1). Negative inside.
# --------------------------------------------------------------------------------------


def _sd_box(px: torch.Tensor, py: torch.Tensor, hx: float, hy: float) -> torch.Tensor:
    dx = px.abs() - hx
    dy = py.abs() - hy
    outside = torch.sqrt(dx.clamp(min=0) ** 2 + dy.clamp(min=0) ** 2)
    inside = torch.maximum(dx, dy).clamp(max=0)
    return outside + inside


def _sd_regular_polygon(px: torch.Tensor, py: torch.Tensor, sides: int, radius: float) -> torch.Tensor:
    """Distance to a regular polygon with circumradius ``radius`` (exact inside, close outside)."""
    sector = 2 * math.pi / sides
    angle = torch.atan2(py, px)
    local = torch.remainder(angle + sector / 2, sector) - sector / 2
    rho = torch.sqrt(px * px + py * py)
    apothem = radius * math.cos(math.pi / sides)
    return rho * torch.cos(local) - apothem


def _sd_star(px: torch.Tensor, py: torch.Tensor, points: int = 5, outer: float = 1.0, inner: float = 0.45) -> torch.Tensor:
    """Approximate distance to a star: the radial gap to its zig-zag outline."""
    angle = torch.atan2(px, -py)  # a point straight up
    sector = 2 * math.pi / points
    local = (torch.remainder(angle, sector) / sector - 0.5).abs() * 2  # 0 at a spike's centre line, 1 between spikes
    # Radius of the outline along this ray, interpolated between inner and outer vertices
    # with the polar form of a straight edge.
    a_half = sector / 2
    t = local * a_half
    # Edge from tip (outer, angle 0) to valley (inner, angle a_half): polar line equation.
    tip = torch.tensor([0.0, outer])
    valley = torch.tensor([inner * math.sin(a_half), inner * math.cos(a_half)])
    edge = valley - tip
    normal = torch.tensor([edge[1], -edge[0]])
    normal = normal / normal.norm()
    c = float((normal * tip).sum())
    r_edge = c / (normal[0] * torch.sin(t) + normal[1] * torch.cos(t))
    rho = torch.sqrt(px * px + py * py)
    return (rho - r_edge) * 0.6


def _sd_heart(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Inigo Quilez's heart, scaled into the unit frame (y points down in images)."""
    x = px.abs() / 1.1
    y = (-py + 0.95) / 1.1 * 0.9
    d_upper = torch.sqrt((x - 0.25) ** 2 + (y - 0.75) ** 2) - math.sqrt(2.0) / 4.0
    m = 0.5 * (x + y).clamp(min=0)
    d_lower_a = (x - 0.0) ** 2 + (y - 1.0) ** 2
    d_lower_b = (x - m) ** 2 + (y - m) ** 2
    s = torch.sign(x - y)
    d_lower = torch.sqrt(torch.minimum(d_lower_a, d_lower_b)) * s
    return torch.where(y + x > 1.0, d_upper, d_lower) * 1.1


def _signed_distance(shape: int, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    name = SHAPES[shape]
    if name == "circle":
        return torch.sqrt(px * px + py * py) - 0.95
    if name == "square":
        return _sd_box(px, py, 0.75, 0.75)
    if name == "triangle":
        return _sd_regular_polygon(px, py + 0.15, 3, 1.1)
    if name == "star":
        return _sd_star(px, py, 5, 1.05, 0.45)
    if name == "hexagon":
        return _sd_regular_polygon(px, py, 6, 0.95)
    if name == "cross":
        return torch.minimum(_sd_box(px, py, 0.95, 0.3), _sd_box(px, py, 0.3, 0.95))
    if name == "heart":
        return _sd_heart(px, py)
    if name == "ring":
        return (torch.sqrt(px * px + py * py) - 0.68).abs() - 0.3
    raise ValueError(f"unknown shape {name!r}")


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def _pixel_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    return xx, yy


def _coverage(distance_px: torch.Tensor) -> torch.Tensor:
    """Anti-aliased coverage from a signed distance in pixels."""
    return (0.5 - distance_px).clamp(0.0, 1.0)


def _backgrounds(scenes: Scenes, size: int, g: torch.Generator) -> torch.Tensor:
    n = len(scenes)
    xx, yy = _pixel_grid(size)
    angle, freq = scenes.pattern[:, 0, None, None], scenes.pattern[:, 1, None, None]
    along = xx * torch.cos(angle) + yy * torch.sin(angle)  # (B, H, W)
    across = -xx * torch.sin(angle) + yy * torch.cos(angle)
    stripes = (torch.sin(2 * math.pi * freq * along) > 0).float()
    gradient = along.clamp(0, 1.4) / 1.4
    checker = ((torch.floor(along * freq) + torch.floor(across * freq)) % 2).float()
    # Smooth-ish noise: coarse random values upsampled bilinearly, plus fine grain.
    coarse = torch.rand(n, 1, 6, 6, generator=g)
    noise = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    noise = (noise + 0.25 * torch.rand(n, size, size, generator=g)).clamp(0, 1)
    plain = torch.zeros(n, size, size)
    mix = torch.stack([plain, noise, stripes, gradient, checker], dim=1)[torch.arange(n), scenes.background]
    a, b = scenes.tones[:, 0, :, None, None], scenes.tones[:, 1, :, None, None]
    return a + (b - a) * mix[:, None]


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    images = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    images = F.conv2d(images, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(images, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _shape_masks(scenes: Scenes, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Filled and outline coverage of every scene's shape, each (B, H, W)."""
    n = len(scenes)
    xx, yy = _pixel_grid(size)
    dx = xx[None] - scenes.centre[:, 0, None, None]
    dy = yy[None] - scenes.centre[:, 1, None, None]
    cos, sin = torch.cos(scenes.rotation)[:, None, None], torch.sin(scenes.rotation)[:, None, None]
    radius = scenes.size[:, None, None]
    px = (cos * dx + sin * dy) / radius
    py = (-sin * dx + cos * dy) / radius
    distance = torch.empty(n, size, size)
    for shape in scenes.shape.unique().tolist():
        idx = (scenes.shape == shape).nonzero(as_tuple=True)[0]
        distance[idx] = _signed_distance(shape, px[idx], py[idx])
    distance_px = distance * radius * size
    filled = _coverage(distance_px)
    # Outline width scales a little with the image so it stays visible at every size.
    half_width = max(0.9, size / 32.0)
    outline = _coverage(distance_px.abs() - half_width)
    return filled, outline


def _distractor_masks(scenes: Scenes, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Face disc coverage and feature (eyes, mouth) coverage of the smiley glyph, each (B, H, W)."""
    xx, yy = _pixel_grid(size)
    r = scenes.distractor_size[:, None, None]
    px = (xx[None] - scenes.distractor_centre[:, 0, None, None]) / r
    py = (yy[None] - scenes.distractor_centre[:, 1, None, None]) / r
    scale = r * size
    face = _coverage((torch.sqrt(px**2 + py**2) - 1.0) * scale)
    eye_left = torch.sqrt((px + 0.38) ** 2 + (py + 0.3) ** 2) - 0.2
    eye_right = torch.sqrt((px - 0.38) ** 2 + (py + 0.3) ** 2) - 0.2
    # Mouth: lower half of a ring.
    mouth_ring = (torch.sqrt(px**2 + (py - 0.05) ** 2) - 0.55).abs() - 0.12
    mouth = torch.where(py > 0.15, mouth_ring, torch.full_like(mouth_ring, 1.0))
    features = _coverage(torch.minimum(torch.minimum(eye_left, eye_right), mouth) * scale)
    present = scenes.has_distractor[:, None, None].float()
    return face * present, features * face * present


def render(scenes: Scenes, size: int = DEFAULT_IMAGE_SIZE, generator: torch.Generator | None = None) -> torch.Tensor:
    """Render scenes to RGB images in [0, 1], shape (B, 3, size, size).

    ``generator`` drives the pixel noise (noisy backgrounds and the noisy style); pass the
    generator used for ``sample_scenes`` to make a batch reproducible from one seed.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    n = len(scenes)
    image = _backgrounds(scenes, size, g)

    face, features = _distractor_masks(scenes, size)
    face_rgb = torch.tensor(DISTRACTOR_FACE_RGB).view(1, 3, 1, 1)
    ink_rgb = torch.tensor(DISTRACTOR_INK_RGB).view(1, 3, 1, 1)
    image = image * (1 - face[:, None]) + face_rgb * face[:, None]
    image = image * (1 - features[:, None]) + ink_rgb * features[:, None]

    filled, outline = _shape_masks(scenes, size)
    style = scenes.style
    is_outline = (style == STYLES.index("outline")).float()[:, None, None]
    mask = filled * (1 - is_outline) + outline * is_outline
    blurred = style == STYLES.index("blurred")
    if blurred.any():
        sigma = 1.2 * size / 32.0
        mask[blurred] = _gaussian_blur(mask[blurred][:, None], sigma)[:, 0]
    colour = scenes.rgb[:, :, None, None]
    image = image * (1 - mask[:, None]) + colour * mask[:, None]

    noisy = style == STYLES.index("noisy")
    if noisy.any():
        grain = 0.18 * torch.randn(int(noisy.sum()), 3, size, size, generator=g)
        image[noisy] = image[noisy] + grain
    assert image.shape == (n, 3, size, size)
    return image.clamp(0.0, 1.0)


def render_batch(
    n: int,
    seed: int,
    *,
    size: int = DEFAULT_IMAGE_SIZE,
    distractor_prob: float = 0.0,
    shapes: list[int] | None = None,
    colours: list[int] | None = None,
) -> tuple[torch.Tensor, Scenes]:
    """Convenience: sample and render ``n`` scenes from one seed."""
    g = torch.Generator().manual_seed(seed)
    scenes = sample_scenes(n, g, shapes=shapes, colours=colours, distractor_prob=distractor_prob)
    return render(scenes, size, g), scenes
