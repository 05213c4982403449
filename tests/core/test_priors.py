"""Latent priors built over a folder of images (core.generators.priors): where they are stored and found, their
card, the fitting code the bundle's prior shares, and every refusal of bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from core.generators import create_generator
from core.generators import decoder as decoder_module
from core.generators.decoder import (
    DecoderHasNoEncoderError,
    UnknownDecoderError,
    UnknownPriorError,
    find_prior_file,
    list_decoders,
    load_latent_prior,
    load_latent_prior_from,
)
from core.generators.image_folder import InvalidImageError, NoImagesError
from core.generators.priors import KDE_BANDWIDTH, PriorError, PriorExistsError, PriorFitConfig, build_prior, fit_mixture
from tests.core.test_decoder_training import IMAGE_SIZE, one_thread, train_tiny, write_images  # noqa: F401 (one_thread: an autouse fixture, here too)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory):
    """A tiny trained decoder ``mine`` in a throwaway cache, and a second folder of images for priors."""
    root = tmp_path_factory.mktemp("priors")
    cache = root / "cache"
    train_tiny(write_images(root / "train"), cache / "decoders" / "mine")
    return cache, write_images(root / "other", 12, seed=1)


def test_a_prior_is_stored_beside_the_decoder_with_its_card_and_found_by_a_job(decoder) -> None:
    cache, images = decoder
    card = build_prior("mine", images, "other", cache_dir=cache)
    path = cache / "decoders" / "mine" / "latent_prior-other.safetensors"
    assert card["path"] == str(path.resolve()) and find_prior_file("mine", "other", cache) == path
    saved = json.loads((cache / "decoders" / "mine" / "latent_prior-other.card.json").read_text())
    assert saved == json.loads(json.dumps(card))
    assert card["prior"] == "other" and card["decoder"] == "mine" and card["bandwidth"] == KDE_BANDWIDTH
    assert card["images"]["folder"] == str(images.resolve()) and card["images"]["count"] == card["images"]["used"] == 12
    assert card["components"] == 12 and card["dimensions"] == 512
    prior = load_latent_prior("mine", "other", cache)
    assert prior.components == 12 and prior.dimensions == 512
    generator = create_generator("decoder", 4, 32, rng=torch.Generator().manual_seed(0), decoder="mine", prior="other", cache_dir=cache)
    assert set(generator.component.tolist()) <= set(range(12))
    with torch.no_grad():
        assert generator().shape == (4, 3, 32, 32)
    assert "other" in next(info for info in list_decoders(cache) if info.name == "mine").priors


def test_the_prior_is_a_kernel_density_over_the_encoders_means(decoder) -> None:
    """The same fitting code as the bundle's latent_prior.safetensors: one component per code, the codes'
    covariance scaled by KDE_BANDWIDTH**2."""
    cache, images = decoder
    build_prior("mine", images, "kde", cache_dir=cache)
    encoder = decoder_module.load_encoder_from(cache / "decoders" / "mine")
    from core.generators.image_folder import as_float, load_image_folder

    with torch.no_grad():
        codes = encoder(as_float(load_image_folder(images, IMAGE_SIZE).pixels))[0].flatten(1)
    expected = fit_mixture(codes, len(codes))
    prior = load_latent_prior_from(cache / "decoders" / "mine", "kde")
    assert torch.allclose(prior.means, expected["means"].half().float())
    assert torch.allclose(prior.scale_tril, expected["scale_tril"], atol=1e-5)


def test_a_subset_is_drawn_when_the_folder_has_more_images_than_the_cap(decoder) -> None:
    cache, images = decoder
    card = build_prior("mine", images, "capped", cache_dir=cache, config=PriorFitConfig(max_images=5))
    assert card["images"]["used"] == 5 and card["images"]["count"] == 12 and card["components"] == 5


def test_an_existing_prior_is_refused_unless_forced(decoder) -> None:
    cache, images = decoder
    build_prior("mine", images, "twice", cache_dir=cache, config=PriorFitConfig(max_images=4))
    with pytest.raises(PriorExistsError) as raised:
        build_prior("mine", images, "twice", cache_dir=cache)
    assert raised.value.code == "prior_exists"
    assert build_prior("mine", images, "twice", cache_dir=cache, force=True)["components"] == 12
    assert load_latent_prior("mine", "twice", cache).components == 12  # the process's cache sees the new file


def test_a_prior_for_a_bundled_decoder_goes_to_the_cache(decoder, tmp_path, monkeypatch) -> None:
    """A bundled decoder's folder belongs to the installed package: its new priors live in <cache>/decoders/<name>/."""
    cache, images = decoder
    bundled = tmp_path / "bundled"
    shutil.copytree(cache / "decoders" / "mine", bundled / "shipped")
    monkeypatch.setattr(decoder_module, "BUNDLED_DIR", bundled)
    build_prior("shipped", images, "mine-too", cache_dir=tmp_path / "cache")
    overlay = tmp_path / "cache" / "decoders" / "shipped"
    assert {p.name for p in overlay.iterdir()} == {"latent_prior-mine-too.safetensors", "latent_prior-mine-too.card.json"}
    assert not (bundled / "shipped" / "latent_prior-mine-too.safetensors").exists()
    assert load_latent_prior("shipped", "mine-too", tmp_path / "cache").components == 12
    assert load_latent_prior("shipped", "fitted", tmp_path / "cache").components == 32  # the bundle's own, still found
    [info] = [i for i in list_decoders(tmp_path / "cache") if i.name == "shipped"]
    assert info.source == "bundled" and "mine-too" in info.priors


def test_bad_input_is_refused_with_a_code(decoder, tmp_path) -> None:
    cache, images = decoder
    cases = [
        (DecoderHasNoEncoderError, "decoder_has_no_encoder", dict(decoder="shapes-vae")),
        (UnknownDecoderError, "unknown_decoder", dict(decoder="no-such-decoder")),
        (NoImagesError, "no_images", dict(images=tmp_path)),
        (PriorError, "invalid_prior", dict(name="standard")),
        (PriorError, "invalid_prior", dict(name="../escape")),
    ]
    for error, code, changes in cases:
        arguments = {"decoder": "mine", "images": images, "name": "bad", **changes}
        with pytest.raises(error) as raised:
            build_prior(arguments["decoder"], arguments["images"], arguments["name"], cache_dir=cache)
        assert raised.value.code == code
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(InvalidImageError, match=r"a\.jpg") as raised:
        build_prior("mine", broken, "bad", cache_dir=cache)
    assert raised.value.code == "invalid_image"
    assert not list((cache / "decoders" / "mine").glob("latent_prior-bad*"))


def test_an_unknown_prior_names_the_command_that_builds_it(decoder) -> None:
    cache, _ = decoder
    with pytest.raises(UnknownPriorError, match="clipforge priors build --decoder mine") as raised:
        create_generator("decoder", 1, 16, rng=torch.Generator().manual_seed(0), decoder="mine", prior="nope", cache_dir=cache)
    assert raised.value.code == "unknown_prior"
