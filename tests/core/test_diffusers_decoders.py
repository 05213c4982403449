"""Decoders of real images from diffusers (core.generators.diffusers_decoders), tested on random-weight instances of
the real architectures (TAESD's AutoencoderTiny at its own default config, a small VQModel): pretrained weights cannot
be downloaded here. The latent contract, gradients through decoder and teacher to the codes, a prior built over a
folder with the encoder the autoencoder ships, and the listing."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderTiny, VQModel

from core.generators import create_generator
from core.generators.decoder import list_decoders, load_decoder, load_encoder_from
from core.generators.diffusers_decoders import DIFFUSERS_SUBDIR, write_decoder_folder
from core.generators.priors import build_prior
from core.synthesis import teacher_probabilities
from tests.core.test_decoder_training import write_images

IMAGE_SIZE = 32  # shapes-mini's input: jobs decode at the teacher's size


def random_taesd(folder, image_size: int = IMAGE_SIZE):
    """TAESD's architecture (diffusers' AutoencoderTiny defaults are TAESD's config) with random weights."""
    torch.manual_seed(0)
    return write_decoder_folder(AutoencoderTiny(), folder, name=folder.name, family="taesd", image_size=image_size, card={"random": True})


def random_vq(folder, image_size: int = IMAGE_SIZE):
    torch.manual_seed(0)
    model = VQModel(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    return write_decoder_folder(model, folder, name=folder.name, family="vq", image_size=image_size, card={"random": True})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers-decoders")
    random_taesd(root / "decoders" / "taesd-random")
    random_vq(root / "decoders" / "vq-random")
    return root


@pytest.mark.parametrize(("name", "latent_shape"), [("taesd-random", (4, 4, 4)), ("vq-random", (3, 16, 16))])
def test_the_latent_contract_and_gradients_reach_the_codes_through_decoder_and_teacher(cache, shapes_teacher, name, latent_shape):
    folder = cache / "decoders" / name
    config = json.loads((folder / "config.json").read_text())
    assert (config["latent_channels"], config["latent_size"], config["latent_size"]) == latent_shape
    assert (folder / DIFFUSERS_SUBDIR / "diffusion_pytorch_model.safetensors").is_file()
    assert load_decoder(name, cache).config.latent_shape == latent_shape
    generator = create_generator("decoder", 3, shapes_teacher.image_size, rng=torch.Generator().manual_seed(1), decoder=name,
                                 prior="standard", cache_dir=cache)  # fmt: skip
    assert [p.shape for p in generator.parameters()] == [(3, *latent_shape)]  # the codes are all that inversion moves
    images = generator()
    assert images.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE) and float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    (shapes_teacher.encode_image(images) @ _classifier(shapes_teacher).T)[:, 0].sum().backward()  # as the inversion loss
    gradient = next(generator.parameters()).grad
    assert gradient is not None and float(gradient.abs().sum()) > 0
    seeded = torch.Generator().manual_seed(1)
    again = create_generator("decoder", 3, IMAGE_SIZE, rng=seeded, decoder=name, prior="standard", cache_dir=cache)
    with torch.no_grad():
        assert torch.equal(again(), images.detach())  # a seed fixes the images


def test_a_prior_over_a_folder_uses_the_encoder_the_autoencoder_ships(cache, shapes_teacher, tmp_path):
    card = build_prior("taesd-random", write_images(tmp_path / "mine", 10), "fitted", cache_dir=cache)
    assert card["dimensions"] == 4 * 4 * 4 and card["components"] == 10
    encoder = load_encoder_from(cache / "decoders" / "taesd-random")
    codes, _ = encoder(torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert codes.shape == (2, 4, 4, 4)
    generator = create_generator("decoder", 6, IMAGE_SIZE, rng=torch.Generator().manual_seed(0), decoder="taesd-random", cache_dir=cache)
    with torch.no_grad():
        probabilities = teacher_probabilities(shapes_teacher, _classifier(shapes_teacher), generator())
    assert probabilities.shape == (6, 2)
    listed = {info.name: info for info in list_decoders(cache)}
    assert listed["taesd-random"].has_encoder and listed["taesd-random"].priors == ("fitted",)
    assert listed["vq-random"].has_encoder and listed["vq-random"].image_size == IMAGE_SIZE


def _classifier(teacher):
    return torch.nn.functional.normalize(teacher.encode_text(["a circle", "a square"]), dim=-1)


def test_a_decoder_folder_is_written_whole_or_not_at_all(tmp_path):
    (tmp_path / "decoders").mkdir()
    with pytest.raises(ValueError, match="multiple of the decoder's downscale 8"):
        random_taesd(tmp_path / "decoders" / "odd", image_size=36)
    assert list((tmp_path / "decoders").iterdir()) == []  # no staging folder, no half decoder
