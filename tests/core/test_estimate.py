"""The duration estimate (before a job runs) and the ETA (while it runs, from measured rates)."""

from __future__ import annotations

import pytest

from core.estimate import STAGES, Eta, estimate_seconds, estimate_stage_seconds, teacher_cost
from core.spec import CustomizeSpec, resolve
from tests.core.teacher_facts import SHAPES_MINI

SHAPE8 = ["circle", "square", "triangle", "star", "hexagon", "cross", "heart", "ring"]


def _resolved(**fields) -> dict:
    return resolve(CustomizeSpec(teacher="shapes-mini", classes=SHAPE8, **fields), "cpu", SHAPES_MINI).model_dump(mode="json")


def test_the_default_cpu_job_is_estimated_near_its_measured_duration():
    # Measured on a built sample bank: 100 s in all on the reference machine (distillation 90 s, synthesis 0.02 s;
    # experiments.md 2026-12-05, session 11).
    stages = estimate_stage_seconds(_resolved())
    assert stages is not None and list(stages) == list(STAGES)
    assert 70 < sum(stages.values()) < 160 and 60 < stages["distilling"] < 140 and stages["synthesizing"] < 5


def test_more_work_costs_more_and_unknowns_have_no_estimate():
    base = estimate_seconds(_resolved())
    assert estimate_seconds(_resolved(distillation={"steps": 8000})) > 1.8 * base
    assert estimate_seconds(_resolved(student={"arch": "resnet18"})) > 5 * base
    assert estimate_seconds(_resolved(synthesis={"steps": 100})) > base + 100
    assert estimate_seconds(_resolved(distillation={"method": "meta_kd"})) > 2 * base
    gpu = resolve(CustomizeSpec(teacher="shapes-mini", classes=SHAPE8), "cuda", SHAPES_MINI).model_dump(mode="json")
    assert estimate_seconds(gpu) is None  # no reference rates for a GPU here
    assert estimate_seconds({**_resolved(), "teacher": "my-own-checkpoint"}) is None
    assert teacher_cost("ViT-B-32/openai") == teacher_cost("ViT-B-32") > 100 * teacher_cost("shapes-mini")


def test_every_open_clip_architecture_and_bundled_teacher_is_priced_from_its_config_without_torch():
    """A teacher the table leaves out is counted from open_clip's JSON config: a job on it gets an estimate at submission
    (the API has no torch), and the count agrees with the table where both know the architecture."""
    import subprocess
    import sys

    from core.estimate import TEACHER_COST, config_cost

    assert teacher_cost("fashion-mini") == teacher_cost("shapes-mini")
    for name in ("ViT-B-32", "RN50", "ViT-B-16", "ViT-L-14"):
        assert abs(config_cost(name) / TEACHER_COST[name] - 1) < 0.03, name
    assert teacher_cost("RN101/openai") > teacher_cost("RN50") and teacher_cost("ViT-H-14@laion2b_s32b_b79k") > teacher_cost("ViT-L-14")
    assert teacher_cost("hf-hub:someone/model") is None and config_cost("no-such-architecture") is None
    assert estimate_seconds({**_resolved(), "teacher": "RN101/openai"}) is not None  # None before: not in the table
    probe = "import sys, core.estimate as e; e.teacher_cost('RN101'); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_eta_is_honest_from_the_first_minute_when_the_estimates_are_off():
    """True durations 2x the estimates, with a short first stage: the old elapsed/fraction ETA started about 4x too
    low; this one is within a factor 2.2 at once and within 10 % once the first long stage has run for a while."""
    estimates = {"pool": 0.0, "preparing": 2.0, "bank": 1.0, "synthesizing": 100.0, "distilling": 300.0, "exporting": 6.0}
    truth = {stage: 2 * seconds for stage, seconds in estimates.items()}
    clock = Clock()
    eta = Eta(dict(estimates), clock=clock)
    errors, shares = [], []
    for stage in STAGES:
        eta.start_stage(stage)
        for tenth in range(10):
            clock.now += truth[stage] / 10
            fraction = (tenth + 1) / 10
            left = eta.seconds_left(fraction)
            true_left = truth[stage] * (1 - fraction) + sum(truth[s] for s in STAGES[STAGES.index(stage) + 1 :])
            errors.append((stage, fraction, left / true_left if true_left else 1.0))
            shares.append((stage, fraction, eta.measured_share))
        eta.end_stage(stage)
    first_minute = [ratio for stage, fraction, ratio in errors if stage in ("preparing", "synthesizing") and fraction <= 0.1]
    assert all(0.45 < r < 2.2 for r in first_minute), first_minute
    later = [ratio for stage, fraction, ratio in errors if stage == "distilling" and fraction < 0.9]
    assert all(0.9 < r < 1.1 for r in later), later  # calibrated by the finished synthesis stage
    # How sure it says it is: mostly estimates at first, all measured once synthesis has calibrated the rest.
    assert all(share < 0.5 for stage, fraction, share in shares if stage == "synthesizing" and fraction <= 0.1)
    assert all(share == 1.0 for stage, fraction, share in shares if stage == "distilling" and fraction >= 0.2)


def test_a_short_fixed_cost_stage_does_not_scale_the_later_estimates():
    """Preparing took 0.1 s against its 2 s estimate: the long stages' estimates must not shrink 20-fold."""
    clock = Clock()
    eta = Eta({"preparing": 2.0, "bank": 1.0, "synthesizing": 20.0, "distilling": 300.0, "exporting": 6.0}, clock=clock)
    eta.start_stage("preparing")
    clock.now += 0.1
    eta.end_stage("preparing")
    eta.start_stage("synthesizing")
    clock.now += 0.5
    assert eta.seconds_left(0.01) > 300  # the estimates as they are: 19.5 + 300 + 6


def test_a_resumed_stage_is_timed_from_where_this_attempt_took_it_up():
    """Distilling resumed at half way from an earlier attempt's checkpoint, synthesis skipped (its set was saved): the ETA
    neither takes the skipped synthesis as this machine's speed nor credits this attempt with the earlier half."""
    estimates = {"pool": 0.0, "preparing": 2.0, "bank": 1.0, "synthesizing": 100.0, "distilling": 300.0, "exporting": 6.0}
    clock = Clock()
    eta = Eta(dict(estimates), clock=clock)
    for stage in ("preparing", "synthesizing"):
        eta.start_stage(stage)
        clock.now += 0.05
        if stage == "synthesizing":
            eta.resume(1.0)
        eta.end_stage(stage)
    assert eta.calibration == 1.0
    eta.start_stage("distilling")
    eta.resume(0.5)
    for tenth in range(1, 5):  # the rest at twice the estimated rate: 300 s of the stage's second half
        clock.now += 60.0
        left = eta.seconds_left(0.5 + tenth / 10)
        true_left = 600 * (0.5 - tenth / 10) + 6
        assert 0.6 < left / true_left < 1.1, (tenth, left, true_left)


def test_a_cpu_job_that_would_take_hours_is_refused_before_it_starts_with_the_faster_ways_named(tmp_path):
    """A random-weight ViT-B-32 at its real 224 px on a decoder whose sample bank is missing: the bank alone is hours of
    teacher passes on 2 cores, so the job stops before its first stage and says what would make it fast."""
    from bench.teacher_speed import random_teacher
    from core.bank import storage_bank_store
    from core.pipeline import BankRequest, JobTooSlowError, customize, job_estimates, resolved_spec
    from core.spec import CustomizeSpec
    from service.storage import LocalStorage

    teacher = random_teacher("ViT-B-32")
    spec = CustomizeSpec.model_validate({"classes": ["a dog", "a cat"], "synthesis": {"decoder": "fashion-vae"}, "budget": "cpu"})
    bank = BankRequest(storage_bank_store(LocalStorage(tmp_path)))
    # On the reference CPU (priced from FLOPs, the same on every machine) the bank alone is over the hour: 16,384 prior
    # samples and 4 views each through the teacher.
    reference = job_estimates(resolved_spec(spec, teacher), teacher, bank=bank, timed=False)
    assert reference is not None and reference["bank"] > 3600
    # The refusal prices on the reference CPU too: a busy machine never refuses a job, a fast one (CI's cores timed
    # this bank at 48 min) never starts this one. This machine's timed estimate is what the job would show.
    assert job_estimates(resolved_spec(spec, teacher), teacher, bank=bank) is not None
    seen = []
    with pytest.raises(JobTooSlowError) as refused:
        customize(spec, teacher, bank=bank, on_progress=seen.append)
    assert seen == [] and refused.value.code == "too_slow_for_cpu"
    assert all(way in str(refused.value) for way in ("pool", "GPU", "clipforge bank build"))
    assert not any(tmp_path.iterdir())  # nothing was built


def test_the_cpu_budget_drops_thin_class_inversion_a_large_teacher_cannot_afford(shapes_teacher):
    """Thin classes get inversion steps on the cpu budget only where their teacher FLOPs fit the budget: shapes-mini's
    do; a random-weight ViT-B-32 at 224 px would spend hours, so its job keeps the chosen images and warns."""
    import dataclasses

    from bench.teacher_speed import random_teacher
    from core.pipeline import affordable_thin_steps, resolved_spec, synthesis_config, thin_steps_warning
    from core.spec import CustomizeSpec

    spec = CustomizeSpec.model_validate(
        {"classes": ["a dog", "a cat", "a car", "a tree"], "budget": "cpu", "synthesis": {"generator": "fourier"}}
    )
    for teacher, kept in ((shapes_teacher, True), (random_teacher("ViT-B-32"), False)):
        resolved = resolved_spec(spec, teacher)
        thin = dataclasses.replace(synthesis_config(resolved, teacher), thin_classes=(0, 2))
        chosen = affordable_thin_steps(resolved, thin, teacher)
        assert (chosen.thin_class_steps == thin.thin_class_steps > 0) is kept
        warnings = thin_steps_warning(chosen, resolved)
        assert (warnings == []) is kept and all("'a dog', 'a car'" in w and "GPU" in w for w in warnings)
