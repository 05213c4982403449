"""Decoders trained on a folder of images (core.generators.training): the files and card, the job's resolution path,
whole-or-nothing writes and every refusal of bad input. A tiny decoder trains for a few steps on 32 generated images."""

from __future__ import annotations

import hashlib
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.generators import create_generator
from core.generators import training as training_module
from core.generators.decoder import (
    DecoderConfig,
    DecoderGenerator,
    find_decoder_dir,
    list_decoders,
    load_decoder,
    load_encoder_from,
    load_latent_prior,
)
from core.generators.image_folder import (
    Cancelled,
    InvalidImageError,
    NoImagesError,
    ShuffledBatches,
    image_files,
    load_image_folder,
)
from core.generators.training import (
    DecoderExistsError,
    TooFewImagesError,
    TrainingConfig,
    architecture_for,
    held_out_split,
    train_decoder_on_folder,
    train_vae,
)
from core.pipeline import resolved_generator
from core.spec import CustomizeSpec

IMAGES = 32
IMAGE_SIZE = 16
TINY = TrainingConfig(steps=6, batch_size=8, warmup_steps=2, log_every=3)
DECODER_FILES = {
    "config.json",
    "weights.safetensors",
    "encoder.safetensors",
    "latent_prior.safetensors",
    "latent_prior.card.json",
    "card.json",
    "reconstructions.png",
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These small convolutions run 8x slower on 2 threads than on 1 when other processes share the CPU (the CLI's
    --threads default is 1 for the same reason); other tests keep conftest's setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_images(folder: Path, count: int = IMAGES, *, seed: int = 0) -> Path:
    """``count`` small scenes (a coloured square on a coloured background), not square and in several formats and
    subfolders, as a user's folder would be."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = np.empty((20, 24, 3), np.uint8)
        pixels[:] = rng.integers(0, 256, 3)
        x, y = rng.integers(2, 12, 2)
        pixels[y : y + 8, x : x + 8] = rng.integers(0, 256, 3)
        path = folder / ("nested/deeper" if i % 3 == 0 else "nested" if i % 3 == 1 else "") / f"{i:03d}.{'jpg' if i % 4 == 0 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
    return folder


def train_tiny(images: Path, out: Path, **kwargs: object) -> dict:
    return train_decoder_on_folder(images, out, **{"image_size": IMAGE_SIZE, "config": TINY, **kwargs})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """A tiny decoder ``mine`` trained into a throwaway cache directory (``$XDG_CACHE_HOME/clipforge`` for ``xdg``)."""
    root = tmp_path_factory.mktemp("trained")
    images = write_images(root / "images")
    cache = root / "xdg" / "clipforge"
    out = cache / "decoders" / "mine"
    card = train_tiny(images, out)
    return types.SimpleNamespace(images=images, xdg=root / "xdg", cache=cache, out=out, card=card)


def test_the_folder_gives_a_decoder_with_its_encoder_a_default_prior_and_a_card(trained) -> None:
    assert {p.name for p in trained.out.iterdir()} == DECODER_FILES
    card = json.loads((trained.out / "card.json").read_text())
    assert card == json.loads(json.dumps(trained.card))
    images = card["images"]
    relative = sorted(p.relative_to(trained.images).as_posix() for p in trained.images.rglob("*.*"))
    assert images["folder"] == str(trained.images.resolve()) and images["count"] == IMAGES
    assert images["files_sha256"] == hashlib.sha256("".join(f"{name}\n" for name in relative).encode()).hexdigest()
    assert len(images["content_sha256"]) == 64 and images["image_size"] == IMAGE_SIZE
    assert images["train"] + images["held_out"] == IMAGES and images["held_out"] == 2
    training = card["training"]
    assert training["steps"] == training["steps_done"] == 6 and training["stopped_by"] == "steps" and training["seconds"] > 0
    assert [entry["step"] for entry in card["history"]] == [3, 6]
    held_out = card["reconstruction"]["held_out"]
    assert held_out["images"] == 2 and 0 < held_out["l1"] < 1 and 0 < held_out["mse"] < 1
    assert card["latent_prior"]["components"] == IMAGES and card["latent_prior"]["images"] == IMAGES
    assert card["machine"]["platform"] and card["machine"]["device"] == "cpu"
    assert card["versions"]["torch"] != "unknown" and card["versions"]["python"]
    config = DecoderConfig.from_file(trained.out / "config.json")
    assert config.name == "mine" and config.image_size == IMAGE_SIZE and config.latent_shape == (8, 8, 8)
    encoder = load_encoder_from(trained.out)
    assert encoder(torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE))[0].shape == (2, 8, 8, 8)


def test_a_job_finds_the_decoder_and_its_prior_by_name_in_the_default_cache(trained, monkeypatch) -> None:
    """The job's path: a spec naming the decoder, core.pipeline's generator options, the generator registry."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(trained.xdg))
    teacher = types.SimpleNamespace(name="a teacher without a decoder", paired_decoder=None)
    spec = CustomizeSpec.model_validate({"classes": ["a", "b"], "synthesis": {"decoder": "mine"}})
    generator_name, options = resolved_generator(spec, teacher)
    assert generator_name == "decoder" and dict(options) == {"decoder": "mine", "prior": "fitted"}
    generator = create_generator(generator_name, 5, 32, rng=torch.Generator().manual_seed(0), **dict(options))
    assert isinstance(generator, DecoderGenerator) and generator.whitened
    with torch.no_grad():
        images = generator()
    assert images.shape == (5, 3, 32, 32) and float(images.min()) >= 0 and float(images.max()) <= 1
    assert load_latent_prior("mine").components == IMAGES
    assert find_decoder_dir("mine") == trained.out


def test_a_decoder_is_also_found_by_its_folder_path(trained) -> None:
    generator = create_generator("decoder", 3, IMAGE_SIZE, rng=torch.Generator().manual_seed(0), decoder=str(trained.out))
    assert generator().shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_list_shows_the_trained_decoder_beside_the_bundled_one(trained) -> None:
    infos = {info.name: info for info in list_decoders(trained.cache)}
    mine, bundled = infos["mine"], infos["shapes-vae"]
    assert mine.source == "cached" and mine.has_encoder and mine.priors[0] == "fitted" and mine.image_size == IMAGE_SIZE
    assert mine.summary == {
        "images_folder": str(trained.images.resolve()),
        "images": IMAGES,
        "steps": 6,
        "seconds": trained.card["training"]["seconds"],
        "held_out_l1": trained.card["reconstruction"]["held_out"]["l1"],
    }
    assert bundled.source == "bundled" and not bundled.has_encoder and set(bundled.priors) == {"fitted", "gaussian"}


def test_retraining_in_place_is_seen_by_the_next_load(tmp_path) -> None:
    """Decoders are cached per process by file, so --force's new weights must not be hidden by the old ones."""
    images = write_images(tmp_path / "images", 8)
    out = tmp_path / "cache" / "decoders" / "again"
    train_tiny(images, out, config=TrainingConfig(steps=1, batch_size=4))
    first = load_decoder("again", tmp_path / "cache")
    train_tiny(images, out, config=TrainingConfig(steps=2, batch_size=4, seed=1), force=True)
    second = load_decoder("again", tmp_path / "cache")
    assert not torch.equal(next(first.parameters()), next(second.parameters()))


def test_batches_and_the_held_out_split_are_a_function_of_the_seed() -> None:
    pixels = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2)
    batches = ShuffledBatches(pixels, 4, seed=3)
    epoch = torch.cat([batches(step) for step in range(5)])[:, 0, 0, 0] * 255  # two epochs of 10 images
    assert sorted(epoch[:10].round().int().tolist()) == list(range(10)) and sorted(epoch[10:].round().int().tolist()) == list(range(10))
    assert torch.equal(ShuffledBatches(pixels, 4, seed=3)(2), batches(2))
    assert not torch.equal(ShuffledBatches(pixels, 4, seed=4)(0), batches(0))
    train, held = held_out_split(100, seed=0)
    assert len(held) == 5 and sorted([*train.tolist(), *held.tolist()]) == list(range(100))
    assert torch.equal(held_out_split(100, seed=0)[1], held)


def test_the_same_seed_trains_the_same_weights_and_leaves_the_global_rng_alone() -> None:
    def batches(step: int) -> torch.Tensor:
        return torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(step))

    config = TrainingConfig(steps=2, batch_size=2)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    first = train_vae(architecture_for("x", IMAGE_SIZE), config, batches)
    assert torch.equal(torch.rand(3), expected)
    second = train_vae(architecture_for("x", IMAGE_SIZE), config, batches)
    assert all(torch.equal(a, b) for a, b in zip(first.decoder.state_dict().values(), second.decoder.state_dict().values(), strict=True))
    assert first.info["steps_done"] == 2 and first.info["stopped_by"] == "steps"


def test_the_architecture_keeps_a_512_code_latent_at_every_size() -> None:
    for size in (16, 32, 64, 128):
        config = architecture_for("x", size)
        assert config.latent_shape == (8, 8, 8) and config.image_size == size
    assert architecture_for("x", 32).widths == (32, 64, 128)  # the bundled shapes-vae's
    with pytest.raises(ValueError, match="image size"):
        architecture_for("x", 48)


# ------------------------------------------------------------------------------------------
# Whole or nothing
# ------------------------------------------------------------------------------------------


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_cancelled_run_writes_nothing(tmp_path) -> None:
    images = write_images(tmp_path / "images", 8)
    out = tmp_path / "decoders" / "cancelled"
    asked: list[int] = []

    def should_cancel() -> bool:  # asked before each of the 8 images, then before each step: cancels at step 3
        asked.append(1)
        return len(asked) > 10

    with pytest.raises(Cancelled, match="after 2 of 6 steps") as raised:
        train_tiny(images, out, should_cancel=should_cancel)
    assert raised.value.code == "cancelled"
    assert not out.exists() and leftovers(out.parent) == []


def test_a_failure_while_writing_leaves_no_folder_and_keeps_the_old_decoder(tmp_path, monkeypatch) -> None:
    images = write_images(tmp_path / "images", 8)
    out = tmp_path / "decoders" / "kept"
    train_tiny(images, out, config=TrainingConfig(steps=1, batch_size=4))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_prior(*args: object, **kwargs: object) -> dict:
        raise OSError("disk full")

    monkeypatch.setattr(training_module, "fit_folder_prior", broken_prior)
    with pytest.raises(OSError, match="disk full"):
        train_tiny(images, out, config=TrainingConfig(steps=1, batch_size=4), force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(out.parent) == ["kept"]
    with pytest.raises(OSError, match="disk full"):
        train_tiny(images, tmp_path / "decoders" / "new", config=TrainingConfig(steps=1, batch_size=4))
    assert leftovers(out.parent) == ["kept"]


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


def test_a_folder_without_images_is_no_images(tmp_path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(NoImagesError) as raised:
            train_tiny(folder, tmp_path / "out")
        assert raised.value.code == "no_images" and str(folder) in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_an_unreadable_image_is_invalid_image_naming_the_file(tmp_path) -> None:
    images = write_images(tmp_path / "images", 4)
    broken = images / "nested" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InvalidImageError) as raised:
        train_tiny(images, tmp_path / "out")
    assert raised.value.code == "invalid_image" and str(broken) in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_one_image_is_too_few(tmp_path) -> None:
    with pytest.raises(TooFewImagesError) as raised:
        train_tiny(write_images(tmp_path / "images", 1), tmp_path / "out")
    assert raised.value.code == "too_few_images"


def test_an_existing_output_is_refused_without_force_and_a_non_decoder_folder_even_with_it(tmp_path) -> None:
    images = write_images(tmp_path / "images", 4)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "thesis.tex").write_text("mine")
    for force in (False, True):
        with pytest.raises(DecoderExistsError) as raised:
            train_tiny(images, tmp_path / "taken", force=force)
        assert raised.value.code == "decoder_exists"
    assert (tmp_path / "taken" / "thesis.tex").read_text() == "mine"


def test_image_files_are_found_recursively_and_sorted(tmp_path) -> None:
    write_images(tmp_path, 6)
    (tmp_path / "skip.gif").write_bytes(b"GIF89a")
    names = [p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path)]
    assert names == sorted(names) and len(names) == 6 and "nested/deeper/000.jpg" in names
    folder = load_image_folder(tmp_path, 8)
    assert folder.pixels.shape == (6, 3, 8, 8) and folder.pixels.dtype == torch.uint8
