"""A job's synthesis split into chunks (a service runs them on many workers) gives the surrogate set, and so the student,
that ``customize`` makes in one process: bit for bit, whatever the chunks, their order, or torch's global RNG."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from core.pipeline import (
    SAMPLES_FILE,
    CustomizeCancelled,
    assemble_surrogate,
    customize,
    distill_and_export,
    prepare,
    synthesis_plan,
    synthesize_chunk,
)
from core.spec import CustomizeSpec
from core.synthesis import (
    assemble,
    batch_ranges,
    chunk_from_bytes,
    chunk_to_bytes,
    plan_chunks,
    surrogate_sha256,
    synthesize,
    synthesize_batches,
)
from tests.servers import QUICK_EXPORT, QUICK_PROBES

# Five batches (3 classes x 5 images, batch 3), with everything a batch draws at random: teacher-chosen starts among
# candidates, inversion steps with cutouts, styles.
TINY = {
    "teacher": "shapes-mini",
    "classes": ["circle", "square", "star"],
    "synthesis": {"images_per_class": 5, "steps": 2, "cutouts": 2, "batch_size": 3, "init_candidates": 2, **QUICK_PROBES},
    "distillation": {"steps": 12, "batch_size": 8},
    "student": {"arch": "tiny_cnn"},
    "export": {**QUICK_EXPORT, "formats": ["onnx"]},
    "seed": 4,
}


def _equal(a, b) -> bool:
    return torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and torch.equal(a.styles, b.styles)


def test_plan_chunks_covers_every_batch_once_and_caps_the_count():
    assert plan_chunks(8, 1, 64) == [[i] for i in range(8)]
    assert plan_chunks(5, 2, 64) == [[0, 1], [2, 3], [4]]
    assert plan_chunks(10, 1, 4) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]  # at most 4 chunks: 3 batches each
    assert plan_chunks(7, 0, 64) == [list(range(7))]  # 0: never split
    assert plan_chunks(0, 1, 64) == []


def test_the_default_cpu_job_and_a_job_with_inversion_steps_split_and_a_tiny_one_does_not(shapes_teacher):
    shape8 = ["circle", "square", "triangle", "star", "hexagon", "cross", "heart", "ring"]
    default = CustomizeSpec.model_validate({"teacher": "shapes-mini", "classes": shape8})  # 256 images x 8 classes, batch 256
    assert synthesis_plan(default, shapes_teacher, batches_per_chunk=1, max_chunks=64) == [[i] for i in range(8)]
    inversion = CustomizeSpec.model_validate({"teacher": "shapes-mini", "classes": shape8, "budget": "gpu"})  # 400 steps
    assert len(synthesis_plan(inversion, shapes_teacher, batches_per_chunk=1, max_chunks=64)) == 8
    assert synthesis_plan(default, shapes_teacher, batches_per_chunk=0, max_chunks=64) == [list(range(8))]  # 0: never split
    tiny = CustomizeSpec.model_validate({**TINY, "synthesis": {"images_per_class": 4, "batch_size": 12, **QUICK_PROBES}})
    assert synthesis_plan(tiny, shapes_teacher, batches_per_chunk=1, max_chunks=64) == [[0]]  # one batch: runs whole


def test_chunks_in_any_order_and_process_state_assemble_to_the_one_process_set(shapes_teacher):
    preparation = prepare(CustomizeSpec.model_validate(TINY), shapes_teacher)
    # Pool growth too: its images come after the optimised ones, copy by copy, whatever the chunks.
    config = replace(preparation.synthesis, neighbours=1)
    whole = synthesize(shapes_teacher, preparation.targets, config, seed=4)
    batches = len(batch_ranges(3, config))
    assert batches == 5
    chunks = []
    for indices in reversed(plan_chunks(batches, 2, 64)):  # later batches first, each after scrambling torch's RNG
        torch.manual_seed(len(chunks) * 977)
        chunk = synthesize_batches(shapes_teacher, preparation.targets, config, indices, seed=4)
        chunks.append(chunk_from_bytes(chunk_to_bytes(chunk)))  # through the tensor file a worker stores
    assembled = assemble(chunks)
    assert _equal(assembled, whole) and surrogate_sha256(assembled) == surrogate_sha256(whole)
    assert len(assembled) == 2 * 15
    with pytest.raises(ValueError, match="exactly once"):
        assemble(chunks[:-1])


# A job with an image pool whose prior is fitted on the pool's codes (fashion-vae ships its encoder): every process
# fits the same prior from the same images.
WITH_POOL = {**TINY, "synthesis": {**TINY["synthesis"], "decoder": "fashion-vae", "pool": "pool_" + "1" * 26}}


@pytest.mark.parametrize("body", [TINY, WITH_POOL], ids=["data-free", "pool-prior"])
def test_the_chunked_path_makes_the_student_customize_makes(shapes_teacher, body):
    spec = CustomizeSpec.model_validate(body)
    pool = torch.rand(80, 3, 32, 32, generator=torch.Generator().manual_seed(8)) if spec.synthesis.pool else None
    one_process = customize(spec, shapes_teacher, pool=pool)
    assert (one_process.metrics["generator"]["prior"] == "pool") == (pool is not None)

    plan = synthesis_plan(spec, shapes_teacher, batches_per_chunk=1, max_chunks=64)
    assert plan == [[0], [1], [2], [3], [4]]
    torch.manual_seed(123)  # another process's RNG: the chunked path must not depend on it
    preparation = prepare(spec, shapes_teacher, pool=pool)
    fractions: list[float] = []
    chunks = [
        chunk_from_bytes(chunk_to_bytes(synthesize_chunk(preparation, shapes_teacher, indices, on_progress=fractions.append)))
        for indices in reversed(plan)
    ]
    assert fractions and fractions[-1] == 1.0  # each chunk reports its own fraction, ending at 1
    surrogate = assemble_surrogate(chunks)
    assert _equal(surrogate, one_process.surrogate)
    torch.rand(17)  # and its global RNG moved on since
    chunked = distill_and_export(preparation, shapes_teacher, surrogate, stage_seconds={"preparing": 1.0, "synthesizing": 2.0})

    expected, got = one_process.student.state_dict(), chunked.student.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert chunked.artifacts[SAMPLES_FILE] == one_process.artifacts[SAMPLES_FILE]
    assert chunked.metrics["surrogate_sha256"] == one_process.metrics["surrogate_sha256"]
    assert chunked.metrics["stage_seconds"]["synthesizing"] == 2.0 and "distilling" in chunked.metrics["stage_seconds"]


def test_a_chunk_stops_when_cancelled_even_without_inversion_steps(shapes_teacher):
    spec = CustomizeSpec.model_validate({**TINY, "synthesis": {**TINY["synthesis"], "steps": 0}})
    preparation = prepare(spec, shapes_teacher)
    asked: list[int] = []

    def cancel_at_second_batch() -> bool:
        asked.append(1)
        return len(asked) >= 2

    with pytest.raises(CustomizeCancelled):
        synthesize_chunk(preparation, shapes_teacher, [0, 1, 2], should_cancel=cancel_at_second_batch)
    assert len(asked) == 2  # checked after each batch: no steps to check between
