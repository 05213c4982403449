import hashlib

import pytest
import torch

from bench.captions import caption_vocabulary, captions_for
from bench.tasks import AMBIGUOUS_NAMES, SPLITS, get_task, list_tasks
from bench.world import COLOUR_NAMES, SHAPES, sample_scenes
from core.registry import UnknownNameError


def test_registry_has_the_four_tasks():
    assert {"shape8", "color8", "combo", "ambiguous"} <= set(list_tasks())
    with pytest.raises(UnknownNameError):
        get_task("nope")


@pytest.mark.parametrize("name", ["shape8", "color8", "combo", "ambiguous"])
def test_labels_match_the_rendered_factors(name):
    task = get_task(name)
    scenes, labels, _ = task.sample("test", 400)
    assert torch.equal(torch.bincount(labels, minlength=len(task.classes)), torch.full((len(task.classes),), 400 // len(task.classes)))
    for k, cls in enumerate(task.classes):
        picked = labels == k
        if cls.shape is not None:
            assert torch.all(scenes.shape[picked] == SHAPES.index(cls.shape))
        if cls.colour is not None:
            assert torch.all(scenes.colour[picked] == COLOUR_NAMES.index(cls.colour))
    assert not scenes.has_distractor.any()


def test_combo_needs_binding():
    task = get_task("combo")
    assert len(task.classes) >= 6
    shapes = [c.shape for c in task.classes]
    colours = [c.colour for c in task.classes]
    assert all(shapes.count(s) >= 2 for s in shapes) and all(colours.count(c) >= 2 for c in colours)


def test_splits_never_share_an_image():
    task = get_task("shape8")
    digests = {}
    for split in SPLITS:
        images, _ = task.render(split, 300)
        digests[split] = {hashlib.sha256(img.numpy().tobytes()).hexdigest() for img in images}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not digests[a] & digests[b], (a, b)
    again, _ = task.render("test", 300)
    assert torch.equal(again, task.render("test", 300)[0])


def test_examples_give_a_few_images_per_class():
    examples = get_task("ambiguous").examples(4)
    assert set(examples) == set(AMBIGUOUS_NAMES.values())
    assert all(v.shape == (4, 3, 32, 32) for v in examples.values())


def test_ambiguous_names_never_occur_in_captions():
    vocabulary = caption_vocabulary()
    for name in AMBIGUOUS_NAMES.values():
        assert not set(name.split()) & vocabulary, name
    scenes = sample_scenes(3000, torch.Generator().manual_seed(0), distractor_prob=0.8)
    import random

    words = {w.strip(".") for c in captions_for(scenes, random.Random(0)) for w in c.split()}
    assert words <= vocabulary
    for name in AMBIGUOUS_NAMES.values():
        assert not set(name.split()) & words


def test_captions_name_the_shape_bind_colour_and_seldom_mention_the_distractor():
    import random

    scenes = sample_scenes(3000, torch.Generator().manual_seed(0), distractor_prob=0.8)
    captions = captions_for(scenes, random.Random(0))
    names_shape = [SHAPES[s] in c for s, c in zip(scenes.shape.tolist(), captions, strict=True)]
    bound = [f"{COLOUR_NAMES[k]} {SHAPES[s]}" in c for s, k, c in zip(scenes.shape.tolist(), scenes.colour.tolist(), captions, strict=True)]
    smiley = ["smiley" in c for c in captions]
    assert sum(names_shape) / len(captions) > 0.9
    assert sum(bound) / len(captions) > 0.6
    assert 0 < sum(smiley) / len(captions) < 0.1
    assert len(set(captions)) > 500


def test_a_subset_of_the_shapes_in_another_order_is_a_task() -> None:
    task = get_task("shapes:star,circle,ring")
    assert task.class_texts == ["star", "circle", "ring"]
    images, labels = task.render("val", 30)
    assert images.shape == (30, 3, 32, 32) and torch.equal(torch.bincount(labels), torch.tensor([10, 10, 10]))
    for bad in ("shapes:star", "shapes:star,star", "shapes:star,blob"):
        with pytest.raises(ValueError, match="distinct shapes"):
            get_task(bad)
