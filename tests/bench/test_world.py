import math

import pytest
import torch

from bench.world import (
    BACKGROUNDS,
    COLOUR_NAMES,
    COLOURS,
    DISTRACTOR_FACE_RGB,
    SHAPES,
    STYLES,
    render,
    render_batch,
    sample_scenes,
    scenes_for,
)


def test_same_seed_same_pixels_and_different_seed_different_pixels():
    a, scenes_a = render_batch(64, seed=7, distractor_prob=0.8)
    b, scenes_b = render_batch(64, seed=7, distractor_prob=0.8)
    c, _ = render_batch(64, seed=8, distractor_prob=0.8)
    assert torch.equal(a, b)
    assert torch.equal(scenes_a.shape, scenes_b.shape)
    assert not torch.equal(a, c)


def test_images_are_rgb_in_unit_range_at_requested_size():
    for size in (32, 48, 64):
        images, _ = render_batch(8, seed=0, size=size)
        assert images.shape == (8, 3, size, size)
        assert images.min() >= 0 and images.max() <= 1


def test_factors_cover_every_shape_colour_background_and_style():
    scenes = sample_scenes(2000, torch.Generator().manual_seed(0), distractor_prob=0.8)
    assert set(scenes.shape.tolist()) == set(range(len(SHAPES)))
    assert set(scenes.colour.tolist()) == set(range(len(COLOURS)))
    assert set(scenes.background.tolist()) == set(range(len(BACKGROUNDS)))
    assert set(scenes.style.tolist()) == set(range(len(STYLES)))
    assert 0.75 < scenes.has_distractor.float().mean() < 0.85
    assert len(SHAPES) >= 8 and len(COLOURS) >= 8 and len(BACKGROUNDS) >= 5 and len(STYLES) >= 4


def _plain_filled(shape: str, colour: str, n: int = 1):
    g = torch.Generator().manual_seed(3)
    scenes = scenes_for(torch.full((n,), SHAPES.index(shape)), torch.full((n,), COLOUR_NAMES.index(colour)), g)
    # Pin the nuisance factors so the label can be checked pixel by pixel.
    scenes.style.fill_(STYLES.index("filled"))
    scenes.background.fill_(BACKGROUNDS.index("plain"))
    scenes.tones.fill_(0.5)
    scenes.rotation.fill_(0.0)
    scenes.size.fill_(0.3)
    scenes.centre.fill_(0.5)
    return scenes, render(scenes, 64, g)


@pytest.mark.parametrize("colour", COLOUR_NAMES)
def test_shape_is_drawn_in_its_labelled_colour(colour):
    scenes, image = _plain_filled("square", colour)
    centre_pixel = image[0, :, 32, 32]
    assert torch.allclose(centre_pixel, scenes.rgb[0], atol=1e-4)
    assert torch.dist(scenes.rgb[0], torch.tensor(COLOURS[colour])) < 0.3


def test_each_shape_covers_its_expected_area_and_shapes_differ():
    areas, masks = {}, {}
    for shape in SHAPES:
        scenes, image = _plain_filled(shape, "red")
        # Anti-aliased coverage, read back from the red channel against the grey background.
        coverage = (image[0, 0] - 0.5) / (scenes.rgb[0, 0] - 0.5)
        masks[shape] = coverage > 0.5
        areas[shape] = coverage.sum().item()
    radius_px = 0.3 * 64
    assert areas["circle"] == pytest.approx(math.pi * (0.95 * radius_px) ** 2, rel=0.05)
    assert areas["square"] == pytest.approx((1.5 * radius_px) ** 2, rel=0.05)
    assert not masks["ring"][32, 32] and masks["circle"][32, 32]  # a ring has a hole
    for a in SHAPES:
        for b in SHAPES:
            if a < b:
                assert (masks[a] ^ masks[b]).float().sum() > 40, (a, b)


def test_distractor_appears_exactly_when_flagged():
    scenes = sample_scenes(200, torch.Generator().manual_seed(1), distractor_prob=0.5, styles=[STYLES.index("filled")])
    images = render(scenes, 32, torch.Generator().manual_seed(1))
    face = torch.tensor(DISTRACTOR_FACE_RGB).view(1, 3, 1, 1)
    face_pixels = ((images - face).abs().amax(1) < 0.03).flatten(1).sum(1)
    assert torch.all(face_pixels[scenes.has_distractor] > 10)
    assert torch.all(face_pixels[~scenes.has_distractor] < 3)
