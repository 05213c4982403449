"""Progress that moves, with a teacher slower than the reference machine's: every stage reports often (a long stage is
never silent for 10 s), the bar gives each stage its share of the job's time (the bank is not 2 % of a job it takes a
third of), and the ETA moves while a stage runs."""

from __future__ import annotations

import itertools
import time

import torch

from core.bank import storage_bank_store
from core.pipeline import BankRequest, Progress, customize
from core.spec import CustomizeSpec
from core.teachers import create_teacher
from service.storage import LocalStorage

SECONDS_PER_IMAGE = 0.01  # the stand-in's image pass: 30x shapes-mini's (0.35 ms); a bank batch of 256 images and 4 views
# each is then 13 s of teacher passes, and the coverage's 1,024 prior samples 10 s


def slow_teacher():
    """shapes-mini whose every image pass also waits SECONDS_PER_IMAGE an image, as a larger teacher would take."""
    teacher = create_teacher("shapes-mini", device="cpu")
    encode = teacher.encode_image

    def slowed(pixels: torch.Tensor) -> torch.Tensor:
        time.sleep(SECONDS_PER_IMAGE * len(pixels))
        return encode(pixels)

    teacher.encode_image = slowed  # type: ignore[method-assign]
    return teacher


def test_a_slow_teachers_job_reports_often_weighs_its_bank_by_its_time_and_its_eta_moves(tmp_path):
    teacher = slow_teacher()
    spec = CustomizeSpec.model_validate(
        {"teacher": "shapes-mini", "classes": ["circle", "star", "heart", "ring"], "budget": "cpu", "seed": 0,
         "distillation": {"steps": 150}, "export": {"formats": ["onnx"]}}
    )  # fmt: skip
    seen: list[tuple[float, Progress]] = []
    customize(
        spec,
        teacher,
        bank=BankRequest(storage_bank_store(LocalStorage(tmp_path)), images=256),
        on_progress=lambda p: seen.append((time.monotonic(), p)),
    )
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(seen)]
    assert max(gaps) < 10.0, max(gaps)  # every stage reports as it goes, a slow teacher's bank and coverage too
    bank = [(at, p) for at, p in seen if p.stage == "bank"]
    took = {stage: max(at for at, p in seen if p.stage == stage) - min(at for at, p in seen if p.stage == stage) for stage in ("bank",)}
    whole = seen[-1][0] - seen[0][0]
    bar_share = bank[-1][1].fraction - bank[0][1].fraction
    assert took["bank"] / whole > 0.2  # the slow teacher makes the bank a large part of this job
    # Within 3x: the stage shares come from the estimate, timed in this process, and a busy machine moves the timings.
    assert 1 / 3 < bar_share / (took["bank"] / whole) < 3.0, (bar_share, took["bank"] / whole)
    etas = [p.eta_seconds for _, p in bank if p.eta_seconds is not None]
    assert len(set(etas)) > len(etas) // 4 and etas[-1] < etas[0], etas  # never frozen: it moves, and down
    fractions = [p.fraction for _, p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
