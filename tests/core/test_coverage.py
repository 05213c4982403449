"""Prior coverage and inversion for thin classes: the preparing stage scores how well the decoder's prior covers each
class, and with no inversion steps otherwise, only the thin classes' images are inverted (the others stay the prior
samples the teacher chose), the same in every process."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from core.coverage import Coverage, coverage_warnings, prior_coverage
from core.pipeline import prepare
from core.spec import CustomizeSpec
from core.synthesis import synthesize_batches
from core.teachers import create_teacher
from core.teachers.base import Teacher

# The cpu budget's kind of synthesis, small: prior samples chosen by the teacher, no inversion steps.
SPEC = {
    "teacher": "shapes-mini",
    "classes": ["circle", "square", "star"],
    "synthesis": {"images_per_class": 4, "steps": 0, "cutouts": 1, "batch_size": 6, "init_candidates": 2, "thin_class_steps": 3},
    "seed": 4,
}


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    return create_teacher("shapes-mini", device="cpu")


def test_coverage_scores_every_class_and_the_threshold_decides_which_are_thin(teacher: Teacher) -> None:
    preparation = prepare(CustomizeSpec.model_validate(SPEC), teacher)
    coverage = preparation.coverage
    assert len(coverage.prior) == 3 and all(0.0 <= p <= 1.0 for p in coverage.prior)
    assert coverage.prior == prepare(CustomizeSpec.model_validate(SPEC), teacher).coverage.prior  # deterministic
    config, classifier = preparation.synthesis, preparation.targets.classifier
    assert prior_coverage(teacher, classifier, config, seed=4, threshold=1.01).thin == (0, 1, 2)
    assert prior_coverage(teacher, classifier, config, seed=4, threshold=0.0).thin == ()
    assert preparation.synthesis.thin_classes == coverage.thin


def test_a_coverage_measured_once_is_taken_as_given_by_later_preparations(teacher: Teacher) -> None:
    """A split job's chunks and distillation prepare with the coverage its first preparation stored (one measurement a
    job, not one a process): the stored record restores exactly, decides the thin classes, and must be this job's."""
    measured = prepare(CustomizeSpec.model_validate(SPEC), teacher).coverage
    assert Coverage.from_json(json.loads(json.dumps(measured.to_json()))) == measured
    given = Coverage([0.9, 0.1, 0.2], measured.threshold, (1, 2))  # not what this prior measures: it shows it is used
    assert prepare(CustomizeSpec.model_validate(SPEC), teacher, coverage=given).synthesis.thin_classes == (1, 2)
    with pytest.raises(ValueError, match="covers 2 classes"):
        prepare(CustomizeSpec.model_validate(SPEC), teacher, coverage=Coverage([0.9, 0.1], measured.threshold, ()))


def test_a_job_with_a_thin_class_distils_with_the_thin_class_method(teacher: Teacher) -> None:
    spec = CustomizeSpec.model_validate(SPEC)  # the cpu budget: plain KD, meta-KD (first order) once a class is thin
    thin = prepare(spec, teacher, coverage=Coverage([0.9, 0.9, 0.2], 0.7, (2,))).spec.distillation
    covered = prepare(spec, teacher, coverage=Coverage([0.9, 0.9, 0.9], 0.7, ())).spec.distillation
    assert (thin.method, thin.first_order, covered.method) == ("meta_kd", True, "kd")
    mine = CustomizeSpec.model_validate({**SPEC, "distillation": {"thin_class_method": "kd"}})
    assert prepare(mine, teacher, coverage=Coverage([0.9, 0.9, 0.2], 0.7, (2,))).spec.distillation.method == "kd"


def test_only_thin_classes_are_inverted_and_batches_stay_independent(teacher: Teacher) -> None:
    preparation = prepare(CustomizeSpec.model_validate(SPEC), teacher)
    config, targets = preparation.synthesis, preparation.targets
    plain = synthesize_batches(teacher, targets, replace(config, thin_classes=()), [0, 1], seed=4)
    thin = synthesize_batches(teacher, targets, replace(config, thin_classes=(2,)), [0, 1], seed=4)
    star = thin.labels == 2
    assert torch.equal(thin.images[~star], plain.images[~star])  # the covered classes keep their chosen prior samples
    assert not torch.equal(thin.images[star], plain.images[star])  # the thin class's images were inverted
    alone = synthesize_batches(teacher, targets, replace(config, thin_classes=(2,)), [1], seed=4)  # another chunk's view
    assert torch.equal(alone.images, thin.images[thin.positions >= alone.positions.min()])
    plain_ccm = synthesize_batches(teacher, targets, replace(config, thin_classes=(2,), thin_class_consistency_weight=1.0), [0], seed=4)
    no_ccm = synthesize_batches(teacher, targets, replace(config, thin_classes=(2,), thin_class_consistency_weight=0.0), [0], seed=4)
    assert not torch.equal(plain_ccm.images, no_ccm.images)  # the thin classes' inversion has its own CCM weight
    steps: list[int] = []
    synthesize_batches(teacher, targets, replace(config, thin_classes=(2,)), [0, 1], seed=4, on_step=lambda d, t: steps.append(t))
    assert steps[-1] == 2 * (config.thin_class_steps + 1)  # progress counts the thin steps


def test_a_class_whose_surrogate_images_stay_unlike_it_gets_a_warning() -> None:
    coverage = {"heart": {"prior": 0.31, "thin": True, "surrogate": 0.42}, "circle": {"prior": 0.99, "thin": False, "surrogate": 0.97}}
    [warning] = coverage_warnings(coverage)
    assert "'heart' stays thin" in warning


def test_a_job_that_turns_to_meta_kd_says_its_longer_estimate_and_its_bar_never_goes_back(teacher: Teacher) -> None:
    """The thin classes are known once preparing measured them: a job whose every class is thin (threshold 1) distils
    with meta-KD, three times the student's work, and its estimate grows then, not after the job ran over it."""
    from core.pipeline import customize

    base = {**SPEC, "budget": "cpu", "distillation": {"steps": 12, "batch_size": 8}, "export": {"formats": ["onnx"]}}
    thin = CustomizeSpec.model_validate({**base, "synthesis": {**SPEC["synthesis"], "coverage_threshold": 1.0}})
    seen: list = []
    result = customize(thin, teacher, on_progress=seen.append)
    assert result.metrics["final_losses"].keys() >= {"loss_train_styles"}  # meta-KD's own losses: it distilled with it
    before = {p.estimated_seconds for p in seen if p.stage in ("pool", "preparing") and p.stage_fraction < 1.0}
    after = {p.estimated_seconds for p in seen if p.stage in ("synthesizing", "distilling", "exporting")}
    assert len(before) == 1 and len(after) == 1 and after.pop() > before.pop()
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
