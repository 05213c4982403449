"""Sample banks (core.bank): named by what they are made of, stored whole, checked on load, rebuilt when damaged, and a
job drawing from one runs its teacher only on what the bank lacks."""

from __future__ import annotations

import copy
import multiprocessing
from pathlib import Path

import pytest
import torch

from core.augment import apply_views
from core.bank import (
    BUILT,
    REBUILT,
    REUSED,
    BankDamagedError,
    SampleBank,
    bank_key,
    obtain_bank,
    storage_bank_store,
)
from core.distill import DISTILL_AUGMENT, DistillConfig, Distiller
from core.pipeline import BankRequest, customize, prepare, synthesize_chunk
from core.spec import CustomizeSpec
from core.students import create_student_for
from core.synthesis import SurrogateSet, assemble
from service.storage import LocalStorage
from tests.servers import QUICK_EXPORT, QUICK_PROBES

BANK_IMAGES = 96
SPEC = {
    "teacher": "shapes-mini",
    "classes": ["circle", "square", "star"],
    "synthesis": {"images_per_class": 6, "batch_size": 6, "init_candidates": 2, "steps": 0, "thin_class_steps": 0, **QUICK_PROBES},
    "distillation": {"steps": 6, "batch_size": 8, "method": "kd", "fresh_share": 0.5, "fixed_views": 2},
    "student": {"arch": "tiny_cnn"},
    "export": {**QUICK_EXPORT, "formats": ["onnx"]},
    "seed": 3,
}


def _synthesis(teacher, body=SPEC):
    return prepare(CustomizeSpec.model_validate(body), teacher).synthesis


def _obtain(teacher, folder: Path, body=SPEC):
    synthesis = _synthesis(teacher, body)
    key = bank_key(teacher, synthesis, DISTILL_AUGMENT, images=BANK_IMAGES, views=2)
    return obtain_bank(storage_bank_store(LocalStorage(folder)), teacher, synthesis, key), key


def test_a_bank_is_built_once_then_reused_and_holds_the_teachers_embeddings_of_its_views(shapes_teacher, tmp_path):
    first, key = _obtain(shapes_teacher, tmp_path)
    again, _ = _obtain(shapes_teacher, tmp_path)
    assert (first.status, again.status) == (BUILT, REUSED)
    assert [p.name for p in (tmp_path / "banks").iterdir()] == [key.storage_key.split("/")[-1]]  # one object, no temporaries
    bank = again.bank
    assert torch.equal(bank.images, first.bank.images) and torch.equal(bank.embeddings, first.bank.embeddings)
    assert bank.images.dtype == torch.uint8 and len(bank) == BANK_IMAGES and bank.views == 2
    # The cached embeddings are the teacher's of the stored image and of each view rebuilt from its geometry.
    index = torch.tensor([0, 5, 17])
    pixels = bank.pixels(index)
    assert torch.allclose(shapes_teacher.encode_image(pixels), bank.embeddings[index, 0], atol=1e-5)
    view = apply_views(pixels, bank.view_params[index, 1], shapes_teacher.image_size)
    assert torch.allclose(shapes_teacher.encode_image(view), bank.embeddings[index, 2], atol=1e-5)


def test_a_damaged_or_foreign_bank_is_refused_and_rebuilt(shapes_teacher, tmp_path):
    built, key = _obtain(shapes_teacher, tmp_path)
    path = tmp_path / key.storage_key
    data = path.read_bytes()
    flipped = bytearray(data)
    flipped[-100] ^= 0xFF
    for damaged in (bytes(flipped), data[: len(data) // 2], b"not a bank"):
        with pytest.raises(BankDamagedError):
            SampleBank.from_bytes(damaged, key)
    path.write_bytes(data[: len(data) // 2])  # a partial write
    rebuilt, _ = _obtain(shapes_teacher, tmp_path)
    assert rebuilt.status == REBUILT and "sha256" in (rebuilt.reason or "")
    assert path.read_bytes() == data  # the same bank again: deterministic
    # A bank of another key stored under this one's name (a changed prior) is not this bank.
    other = SampleBank(*_tensors(built.bank), key=key.__class__(**{**key.to_json(), "augment": key.augment, "prior": "standard"}))
    with pytest.raises(BankDamagedError, match="another"):
        SampleBank.from_bytes(other.to_bytes(), key)


def _tensors(bank: SampleBank):
    return bank.images, bank.view_params, bank.embeddings


def test_the_key_changes_with_the_teachers_weights_and_the_prior(shapes_teacher):
    synthesis = _synthesis(shapes_teacher)
    key = bank_key(shapes_teacher, synthesis, DISTILL_AUGMENT, images=BANK_IMAGES)
    changed = copy.deepcopy(shapes_teacher)
    del changed._weights_sha256  # a copy of a loaded teacher: its digest is computed again
    with torch.no_grad():
        next(changed.model.parameters()).add_(1e-3)
    standard = _synthesis(shapes_teacher, {**SPEC, "synthesis": {**SPEC["synthesis"], "prior": "standard"}})
    keys = [
        key,
        bank_key(changed, synthesis, DISTILL_AUGMENT, images=BANK_IMAGES),
        bank_key(shapes_teacher, standard, DISTILL_AUGMENT, images=BANK_IMAGES),
    ]
    assert len({k.digest for k in keys}) == 3 and len({k.storage_key for k in keys}) == 3
    assert keys[1].source == key.source and keys[2].teacher == key.teacher
    # A pool's prior is the job's own: no shared bank serves it.
    pool_spec = {
        **SPEC,
        "synthesis": {**SPEC["synthesis"], "decoder": "fashion-vae", "pool": "pool_" + "2" * 26},
        "distillation": {**SPEC["distillation"], "fresh_share": 0.0},
    }
    pooled = prepare(CustomizeSpec.model_validate(pool_spec), shapes_teacher, pool=torch.rand(80, 3, 32, 32)).synthesis
    assert bank_key(shapes_teacher, pooled, DISTILL_AUGMENT) is None


def _build_in_process(folder: str, results) -> None:
    from core.teachers import create_teacher

    teacher = create_teacher("shapes-mini", device="cpu")
    outcome, key = _obtain(teacher, Path(folder))
    results.put((outcome.status, key.storage_key))


def test_two_processes_building_one_bank_leave_one_whole_bank(shapes_teacher, tmp_path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_build_in_process, args=(str(tmp_path), results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(240)
        assert worker.exitcode == 0
    outcomes = [results.get(timeout=5) for _ in workers]
    storage_key = outcomes[0][1]
    assert {o[1] for o in outcomes} == {storage_key} and {o[0] for o in outcomes} <= {BUILT, REUSED}
    assert [p.name for p in (tmp_path / "banks").iterdir()] == [storage_key.split("/")[-1]]
    again, _ = _obtain(shapes_teacher, tmp_path)
    assert again.status == REUSED  # whole, and of this key


class _CountingTeacher:
    """Counts the images the teacher embeds (wraps encode_image)."""

    def __init__(self, teacher) -> None:
        self.teacher, self.images = teacher, 0
        self.original = teacher.encode_image

    def __enter__(self):
        def counted(pixels):
            self.images += len(pixels)
            return self.original(pixels)

        self.teacher.encode_image = counted
        return self

    def __exit__(self, *_):
        del self.teacher.encode_image


def test_with_a_bank_and_fixed_views_distillation_steps_never_run_the_teacher(shapes_teacher, tmp_path):
    outcome, _ = _obtain(shapes_teacher, tmp_path)
    classifier = torch.nn.functional.normalize(torch.randn(3, 128), dim=-1)
    data = SurrogateSet(torch.rand(12, 3, 32, 32), torch.arange(12) % 3, torch.arange(12) % 2)
    config = DistillConfig(method="kd", steps=20, batch_size=8, fresh_share=0.5, fixed_views=2)
    student = create_student_for(shapes_teacher, "tiny_cnn", 3, None)
    with _CountingTeacher(shapes_teacher) as counter:
        Distiller(student, shapes_teacher, classifier, config, seed=0, bank=outcome.bank).fit(data)
    assert counter.images == 12 * 2  # the surrogate set's fixed views, once; 20 steps of 8 images: none
    with _CountingTeacher(shapes_teacher) as counter:
        Distiller(student, shapes_teacher, classifier, DistillConfig(method="kd", steps=20, batch_size=8, fresh_share=0.5), seed=0,
                  bank=outcome.bank).fit(data)  # fmt: skip
    assert counter.images == 20 * 8  # without fixed views: every view of every step


def test_a_job_on_a_bank_is_deterministic_and_its_chunks_assemble_to_it(shapes_teacher, tmp_path):
    spec = CustomizeSpec.model_validate(SPEC)
    request = BankRequest(storage_bank_store(LocalStorage(tmp_path)), BANK_IMAGES)
    first = customize(spec, shapes_teacher, bank=request)
    second = customize(spec, shapes_teacher, bank=request)
    assert first.metrics["bank"]["status"] == "built" and second.metrics["bank"]["status"] == "reused"
    assert first.metrics["surrogate_sha256"] == second.metrics["surrogate_sha256"]
    a, b = first.student.state_dict(), second.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Every surrogate image is one of the bank's (chosen by its cached embeddings), none decoded anew.
    from core.pipeline import with_bank

    preparation = with_bank(prepare(spec, shapes_teacher), shapes_teacher, request)
    bank_pixels = preparation.bank.pixels(torch.arange(BANK_IMAGES)).flatten(1)
    surrogate = first.surrogate.images.flatten(1)
    assert bool((surrogate[:, None] == bank_pixels[None]).all(-1).any(-1).all())
    chunks = [synthesize_chunk(preparation, shapes_teacher, [b]) for b in (2, 0, 1)]
    assert torch.equal(assemble(chunks).images, first.surrogate.images)
    without = customize(spec, shapes_teacher)
    assert without.metrics["bank"] == {"used": False, "reason": "no bank store"}
