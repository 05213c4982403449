"""`clipforge decoders train|list` and `clipforge priors build`: the console script once, the rest in-process, and
every refusal of bad input (``error [code]: ...`` on stderr, exit status 2)."""

from __future__ import annotations

import json
import time

import pytest

from cli.main import main
from tests.cli.test_teachers_cli import run
from tests.core.test_decoder_training import one_thread, write_images  # noqa: F401 (one_thread: an autouse fixture, here too)


def test_train_then_build_a_prior_then_list_as_a_user_does(tmp_path, capsys):
    images = write_images(tmp_path / "photos")
    cache = tmp_path / "cache"
    result = run(
        "decoders", "train", "--images", str(images), "--out", "mine", "--steps", "3", "--batch-size", "8", "--image-size", "16",
        "--cache-dir", str(cache),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "images 32/32" in result.stderr and "training 3/3" in result.stderr and "loss" in result.stderr and "ETA" in result.stderr
    folder = cache / "decoders" / "mine"
    assert f"wrote decoder 'mine' to {folder}: 32 images, 3 steps" in result.stdout
    assert f'"synthesis": {{"decoder": "{folder.resolve()}"}}' in result.stdout  # a job finds a non-default cache by path
    assert json.loads((folder / "card.json").read_text())["images"]["count"] == 32

    # The rest in-process: the console script's start-up (torch) is paid once above.
    build = ["priors", "build", "--decoder", "mine", "--images", str(images / "nested"), "--name", "nested", "--cache-dir", str(cache)]
    assert main(build) == 0
    captured = capsys.readouterr()
    assert (folder / "latent_prior-nested.safetensors").is_file() and "prior 'nested'" in captured.out
    assert "images 22/22" in captured.err

    assert main(["decoders", "list", "--json", "--cache-dir", str(cache)]) == 0
    listed = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert listed["mine"]["source"] == "cached" and listed["mine"]["priors"] == ["fitted", "nested"]
    assert listed["mine"]["summary"]["images"] == 32 and listed["shapes-vae"]["source"] == "bundled"


def test_list_in_text(tmp_path, capsys):
    assert main(["decoders", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "shapes-vae" in out and "bundled" in out and "no encoder" in out and "priors: fitted, gaussian" in out


def error_code(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("error [") == 1 and "Traceback" not in err
    return err[err.index("error [") + 7 : err.index("]")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.core.test_decoder_training import train_tiny

    root = tmp_path_factory.mktemp("cli")
    images = write_images(root / "images", 8)
    train_tiny(images, root / "cache" / "decoders" / "mine")
    return root / "cache", images


def test_bad_input_is_an_error_code(trained, tmp_path, capsys):
    cache, images = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not a png")
    train = ("decoders", "train", "--steps", "1", "--image-size", "16", "--cache-dir", str(cache), "--quiet")
    build = ("priors", "build", "--cache-dir", str(cache), "--quiet")
    cases = {
        "no_images": (*train, "--images", str(empty), "--out", "new"),
        "invalid_image": (*train, "--images", str(broken), "--out", "new"),
        "decoder_exists": (*train, "--images", str(images), "--out", "mine"),
        "invalid_name": (*train, "--images", str(images), "--out", "-bad name"),
        "prior_exists": (*build, "--decoder", "mine", "--images", str(images), "--name", "fitted"),
        "decoder_has_no_encoder": (*build, "--decoder", "shapes-vae", "--images", str(images), "--name", "p"),
        "unknown_decoder": (*build, "--decoder", "nope", "--images", str(images), "--name", "p"),
    }
    for code, argv in cases.items():
        assert error_code(capsys, *argv) == code, argv
    assert error_code(capsys, *train, "--images", str(images), "--out", "shapes-vae") == "decoder_exists"
    assert "x.png" in (main([*build, "--decoder", "mine", "--images", str(broken), "--name", "p"]), capsys.readouterr().err)[1]
    assert not (cache / "decoders" / "new").exists()


def test_pull_offline_fails_fast_with_a_code_and_what_to_do(tmp_path, capsys, monkeypatch):
    """No internet here (nor in CI): the probe fails and nothing is written; HF_HUB_OFFLINE makes it so anywhere."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    assert error_code(capsys, "decoders", "pull", "taesd", "--cache-dir", str(tmp_path)) == "decoder_unavailable"
    assert time.monotonic() - start < 10
    assert error_code(capsys, "decoders", "pull", "vqgan-imagenet", "--cache-dir", str(tmp_path)) == "unknown_decoder"
    assert error_code(capsys, "decoders", "pull", "taesd", "--image-size", "100", "--cache-dir", str(tmp_path)) == "invalid_argument"
    assert not (tmp_path / "decoders").exists()
