"""The fashion world on small stand-in IDX files: no Debian package, no apt-get, no network."""

from __future__ import annotations

import gzip
import hashlib
import random
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from bench import fashion
from bench.captions import FASHION_STYLES, FASHION_SYNONYMS, fashion_caption
from bench.evaluate import zero_shot
from bench.fashion import (
    DATA_DIR_ENV,
    FASHION_CLASSES,
    IDX_FILES,
    PACKAGE,
    PACKAGE_DATA_DIR,
    FashionDataInvalid,
    FashionDataUnavailable,
    FashionSource,
    load_fashion,
    locate_fashion,
)
from bench.tasks import FASHION_FOOTWEAR, FASHION_TOPS, get_task, list_tasks

TRAIN_PER_CLASS = 36  # 3 val, 3 examples and 30 train photos per class
TEST_PER_CLASS = 8


def _idx(magic: int, dims: Sequence[int], data: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + data


def write_stand_ins(folder: Path, *, compress: bool = True) -> Path:
    """Fashion-MNIST's four files in the real format: each photo's pixels encode its class and index."""
    folder.mkdir(parents=True, exist_ok=True)
    for part, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        labels = [k for k in range(len(FASHION_CLASSES)) for _ in range(per_class)]
        random.Random(part).shuffle(labels)
        images = bytearray()
        for i, label in enumerate(labels):
            photo = bytearray(28 * 28)
            photo[0] = 20 * label  # readable class
            photo[1], photo[2] = i // 256, i % 256  # unique per photo within its file ...
            photo[3] = part == "test"  # ... and across the two files
            photo[28 * 10 : 28 * 18] = bytes([255]) * (28 * 8)  # a bright band: content for the resize
            images += photo
        for key, blob in (
            (f"{part}_images", _idx(fashion.IDX_IMAGES_MAGIC, (len(labels), 28, 28), bytes(images))),
            (f"{part}_labels", _idx(fashion.IDX_LABELS_MAGIC, (len(labels),), bytes(labels))),
        ):
            name = IDX_FILES[key]
            if compress:
                (folder / (name + ".gz")).write_bytes(gzip.compress(blob))
            else:
                (folder / name).write_bytes(blob)
    return folder


@pytest.fixture
def stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = write_stand_ins(tmp_path / "fashion")
    monkeypatch.setenv(DATA_DIR_ENV, str(folder))
    return folder


def no_commands(command: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    raise AssertionError(f"ran {command}")


def failing_commands(command: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(list(command), 100, "", "E: Unable to locate package")


def test_reads_idx_files_gzipped_or_not(tmp_path: Path) -> None:
    for compress in (True, False):
        folder = write_stand_ins(tmp_path / str(compress), compress=compress)
        data = load_fashion(FashionSource(data_dir=folder, run=no_commands))
        assert data.train.images.shape == (10 * TRAIN_PER_CLASS, 28, 28) and data.train.images.dtype == torch.uint8
        assert data.test.labels.bincount().tolist() == [TEST_PER_CLASS] * 10
        assert torch.equal(data.train.images[:, 0, 0].long(), 20 * data.train.labels)


def test_splits_are_disjoint_balanced_and_fixed(stand_ins: Path) -> None:
    data = load_fashion()
    sizes = {name: data.split(name).labels.bincount(minlength=10).tolist() for name in fashion.SPLITS}
    assert sizes == {"train": [30] * 10, "val": [3] * 10, "examples": [3] * 10, "test": [TEST_PER_CLASS] * 10}
    train_ids = {}
    for name in ("train", "val", "examples"):
        images = data.split(name).images
        train_ids[name] = set((images[:, 0, 1].long() * 256 + images[:, 0, 2].long()).tolist())
    assert sum(len(ids) for ids in train_ids.values()) == 10 * TRAIN_PER_CLASS  # every train photo in exactly one split
    again = fashion.holdout_indices(data.train.labels)
    assert torch.equal(again["val"], fashion.holdout_indices(data.train.labels.clone())["val"])
    with pytest.raises(ValueError, match="unknown split"):
        data.split("everything")


def test_fashion_tasks_render_balanced_rgb_photos(stand_ins: Path) -> None:
    assert {"fashion10", "fashion-footwear", "fashion-tops"} <= set(list_tasks())
    task = get_task("fashion10")
    assert task.class_texts == list(FASHION_CLASSES)
    assert task.available("test") == 10 * TEST_PER_CLASS and task.available("val") == 30
    images, labels = task.render("test", 40, size=32)
    assert images.shape == (40, 3, 32, 32) and images.dtype == torch.float32
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])  # grey in RGB
    assert labels.bincount().tolist() == [4] * 10
    native, native_labels = task.render("test", 40, size=28)
    assert torch.equal(native_labels, labels)
    assert torch.allclose(native[:, 0, 0, 0] * 255, 20 * labels.float(), atol=1e-3)  # the right photo for its label
    again, _ = task.render("test", 40, size=32)
    assert torch.equal(again, images)
    with pytest.raises(ValueError, match="photos of"):
        task.render("test", 10 * TEST_PER_CLASS + 10)


def test_subsets_use_their_own_labels(stand_ins: Path) -> None:
    for name, texts in (("fashion-footwear", FASHION_FOOTWEAR), ("fashion-tops", FASHION_TOPS)):
        task = get_task(name)
        assert task.class_texts == list(texts)
        images, labels = task.render("val", 3 * len(texts), size=28)
        photo_labels = (images[:, 0, 0, 0] * 255 / 20).round().long()
        expected = torch.tensor([FASHION_CLASSES.index(texts[k]) for k in labels.tolist()])
        assert torch.equal(photo_labels, expected)
        examples = task.examples(2, size=32)
        assert list(examples) == list(texts) and all(v.shape == (2, 3, 32, 32) for v in examples.values())


def test_splits_never_share_a_photo(stand_ins: Path) -> None:
    task = get_task("fashion10")
    digests = {}
    for split in ("train", "val", "test", "examples"):
        images, _ = task.render(split, task.available(split), size=28)
        digests[split] = {hashlib.sha256(img.numpy().tobytes()).hexdigest() for img in images}
        assert len(digests[split]) == task.available(split)
    splits = list(digests)
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            assert not digests[a] & digests[b], (a, b)


def test_zero_shot_defaults_to_the_whole_photo_split(stand_ins: Path, shapes_teacher) -> None:
    result = zero_shot(shapes_teacher, "fashion-footwear", split="test", images=None)
    assert result.images == 4 * TEST_PER_CLASS and set(result.per_class) == set(FASHION_FOOTWEAR)
    assert zero_shot(shapes_teacher, "shape8", split="val", images=None).images == 2000


def test_nothing_found_is_a_clear_error_naming_the_package(tmp_path: Path) -> None:
    source = FashionSource(cache_dir=tmp_path / "cache", system=False, download=False, run=no_commands)
    with pytest.raises(FashionDataUnavailable) as error:
        locate_fashion(source)
    assert error.value.code == "dataset_unavailable" and error.value.package == PACKAGE
    assert PACKAGE in str(error.value) and DATA_DIR_ENV in str(error.value)
    # apt-get tried and failed (offline, no lists): the same error, with apt-get's words.
    source = FashionSource(cache_dir=tmp_path / "cache", system=True, download=True, run=failing_commands)
    with pytest.raises(FashionDataUnavailable, match=r"apt-get download dataset-fashion-mnist.*Unable to locate"):
        locate_fashion(source)
    assert not list((tmp_path / "cache").rglob("*.gz"))


def test_a_named_folder_without_the_files_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FashionDataUnavailable, match=DATA_DIR_ENV) as error:
        locate_fashion()
    assert error.value.code == "dataset_unavailable"


def test_a_corrupt_file_is_named(tmp_path: Path) -> None:
    folder = write_stand_ins(tmp_path / "fashion", compress=False)
    blob = (folder / IDX_FILES["test_labels"]).read_bytes()
    (folder / IDX_FILES["test_labels"]).write_bytes(blob[:-3])
    with pytest.raises(FashionDataInvalid, match="t10k-labels") as error:
        load_fashion(FashionSource(data_dir=folder))
    assert error.value.code == "dataset_invalid"


def test_the_installed_package_is_found_with_dpkg(tmp_path: Path) -> None:
    installed = write_stand_ins(tmp_path / "usr/share/datasets/fashion-mnist")

    def dpkg(command: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
        assert list(command) == ["dpkg", "-L", PACKAGE]
        listing = "\n".join([str(installed.parent), str(installed), *(str(p) for p in sorted(installed.iterdir()))])
        return subprocess.CompletedProcess(list(command), 0, listing + "\n", "")

    assert locate_fashion(FashionSource(cache_dir=tmp_path / "cache", download=False, run=dpkg)) == installed


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb to build a stand-in package")
def test_the_package_file_is_fetched_and_unpacked_into_the_cache(tmp_path: Path) -> None:
    # A real .deb holding the stand-ins where the package holds the real files; "apt-get download" copies it.
    tree = tmp_path / "tree"
    write_stand_ins(tree / PACKAGE_DATA_DIR)
    (tree / "DEBIAN").mkdir()
    control = f"Package: {PACKAGE}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: stand-in\n"
    (tree / "DEBIAN/control").write_text(control)
    deb = tmp_path / f"{PACKAGE}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(deb)], check=True, capture_output=True)
    commands: list[str] = []

    def apt(command: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
        commands.append(command[0])
        if command[0] == "dpkg":
            return subprocess.CompletedProcess(list(command), 1, "", "not installed")
        if command[0] == "apt-get":
            assert list(command) == ["apt-get", "download", PACKAGE]
            shutil.copy(deb, cwd / deb.name)
            return subprocess.CompletedProcess(list(command), 0, "", "")
        return fashion.run_command(command, cwd)  # the real dpkg-deb -x

    cache = tmp_path / "cache"
    folder = locate_fashion(FashionSource(cache_dir=cache, run=apt))
    assert folder == cache / fashion.CACHE_SUBDIR and commands == ["dpkg", "apt-get", "dpkg-deb"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(name + ".gz" for name in IDX_FILES.values())
    assert not [p for p in folder.parent.iterdir() if p != folder]  # the scratch folder is gone
    # Found in the cache next time: nothing is run but the dpkg query.
    commands.clear()
    assert locate_fashion(FashionSource(cache_dir=cache, run=apt)) == folder and commands == ["dpkg"]
    assert load_fashion(FashionSource(data_dir=folder)).train.labels.bincount().tolist() == [TRAIN_PER_CLASS] * 10


def test_captions_use_class_names_and_synonyms_with_styles() -> None:
    rng = random.Random(0)
    captions = {text: [fashion_caption(text, None, rng) for _ in range(400)] for text in FASHION_CLASSES}
    for text, lines in captions.items():
        assert sum(text in line for line in lines) > 0.4 * len(lines)
        for synonym in FASHION_SYNONYMS[text]:
            assert any(synonym in line for line in lines), synonym
    assert "trainer" in FASHION_SYNONYMS["sneaker"] and "running shoe" in FASHION_SYNONYMS["sneaker"]
    assert {"tee", "top"} <= set(FASHION_SYNONYMS["t-shirt"]) and "handbag" in FASHION_SYNONYMS["bag"]
    blurred = [fashion_caption("coat", "blurred", rng) for _ in range(400)]
    assert sum("blurry" in c or "out of focus" in c for c in blurred) > 0.5 * len(blurred)
    styled = [c for lines in captions.values() for c in lines if "in the style of" in c]
    assert styled and all(any(c.split("in the style of ")[1].rstrip(".") == s for s in FASHION_STYLES) for c in styled)


FASHION_MINI = Path(__file__).resolve().parents[2] / "core/teachers/bundled/fashion-mini"


@pytest.mark.skipif(not (FASHION_MINI / "weights.safetensors").is_file(), reason="fashion-mini is not bundled yet")
def test_the_bundled_fashion_teacher_loads_and_its_card_meets_the_target() -> None:
    import json

    from core.teachers import create_teacher, list_teachers

    teacher = create_teacher("fashion-mini", device="cpu")
    assert teacher.image_size == 32 and teacher.paired_decoder == "fashion-vae"  # its bundled decoder
    assert set(teacher.default_styles) == set(FASHION_STYLES)
    words = teacher.encode_text(["a photo of a sneaker.", "a photo of a trainer.", "a photo of a running shoe.", "a photo of a bag."])
    assert float(words[0] @ words[1]) > float(words[0] @ words[3]) and float(words[0] @ words[2]) > float(words[0] @ words[3])
    card = json.loads((FASHION_MINI / "card.json").read_text())
    assert card["zero_shot_test"]["fashion10"] >= 0.85 and card["training"]["world"] == "fashion"
    assert "fashion-mini" in [t.name for t in list_teachers()]
