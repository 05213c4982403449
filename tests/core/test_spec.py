import subprocess
import sys
from typing import get_args

import pytest
from pydantic import ValidationError

from core.spec import (
    BUDGETS,
    DEFAULT_STYLES,
    CustomizeSpec,
    ExportFormat,
    NoImagePriorError,
    ResolvedSpec,
    UnsupportedExportError,
    noise_generator_warning,
    resolve,
    with_image_prior,
)
from core.student_catalog import EXPORT_FORMATS, STUDENTS, StudentEntry
from tests.core.teacher_facts import SHAPES_MINI


class FakeTeacher:
    """The teacher facts resolve reads (core.spec.TeacherFacts)."""

    def __init__(self, name: str = "shapes-mini", paired_decoder: str | None = "shapes-vae") -> None:
        self.name, self.paired_decoder = name, paired_decoder


def test_the_simplest_body_is_a_complete_spec():
    spec = CustomizeSpec.model_validate({"classes": ["cat", "dog"]})
    assert spec.class_names == ["cat", "dog"]
    assert spec.classes[0].prompt_text == "cat"
    assert spec.budget == "auto" and spec.synthesis.steps is None and spec.student.arch is None  # the budget decides
    assert spec.synthesis.lr == 0.1 and spec.synthesis.class_consistency_weight == 1.0
    assert spec.export.formats == ["onnx", "torchscript"] and spec.export.opset >= 17
    assert len(DEFAULT_STYLES) == 16


def test_text_and_images_combine_and_images_alone_have_no_text():
    spec = CustomizeSpec.model_validate(
        {"classes": [{"name": "a", "text": "a red thing", "images": ["u1"]}, {"name": "b", "images": ["u2", "u3"]}]}
    )
    assert spec.classes[0].prompt_text == "a red thing" and spec.classes[0].images == ["u1"]
    assert spec.classes[1].prompt_text is None


@pytest.mark.parametrize(
    "body",
    [
        {"classes": ["only-one"]},
        {"classes": ["cat", "Cat"]},
        {"classes": ["cat", "  cat  "]},
        {"classes": ["cat", "   "]},
        {"classes": ["cat", "do\x00g"]},
        {"classes": ["cat", "x" * 1000]},
        {"classes": ["cat", "dog"], "unknown_field": 1},
        {"classes": ["cat", "dog"], "distillation": {"method": "magic"}},
        {"classes": ["cat", "dog"], "device": "tpu"},
        {"classes": ["cat", "dog"], "synthesis": {"steps": -1}},
        {"classes": [f"c{i}" for i in range(1001)]},
    ],
)
def test_bad_specs_are_rejected(body):
    with pytest.raises(ValidationError):
        CustomizeSpec.model_validate(body)


def test_spec_module_does_not_import_torch():
    code = "import sys, core.spec; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unset_fields_take_the_budget_of_the_device_and_set_ones_are_kept():
    spec = CustomizeSpec.model_validate({"classes": ["cat", "dog"]})
    cpu, gpu = resolve(spec, "cpu", SHAPES_MINI), resolve(spec, "cuda", SHAPES_MINI)
    assert cpu.budget == "cpu" and gpu.budget == "gpu"
    for resolved, budget in ((cpu, BUDGETS["cpu"]), (gpu, BUDGETS["gpu"])):
        for section, defaults in budget.items():
            for field, value in defaults.items():
                if (section, field) == ("distillation", "pool_share"):
                    continue  # 0 without a pool to draw from (tests/core/test_pools.py)
                assert getattr(getattr(resolved, section), field) == value, (section, field)
    assert gpu.student.arch == "resnet18" and gpu.synthesis.steps == 400  # the paper's budget on CUDA
    assert resolve(cpu, "cuda", SHAPES_MINI) == cpu  # resolving twice changes nothing; the budget is fixed once chosen
    mine = resolve(
        CustomizeSpec.model_validate(
            {"classes": ["a", "b"], "budget": "gpu", "student": {"arch": "tiny_cnn"}, "distillation": {"epochs": 3}}
        ),
        "cpu",
        SHAPES_MINI,
    )
    assert mine.budget == "gpu" and mine.student.arch == "tiny_cnn" and mine.synthesis.steps == 400
    assert mine.distillation.epochs == 3 and mine.distillation.steps is None  # epochs given: the budget's steps do not apply


def test_resolve_names_the_teacher_and_returns_a_resolved_spec_once():
    spec = CustomizeSpec.model_validate({"classes": ["a", "b"]})
    assert spec.teacher is None  # the service's default teacher, filled in at submission
    resolved = resolve(spec, "cpu", FakeTeacher("mine"))
    assert isinstance(resolved, ResolvedSpec) and resolved.teacher == "mine" and resolved.budget == "cpu"
    assert resolve(resolved, "cuda", FakeTeacher("other")) is resolved  # resolved once; later stages pass it on
    named = resolve(CustomizeSpec.model_validate({"classes": ["a", "b"], "teacher": "theirs"}), "cpu", FakeTeacher("mine"))
    assert named.teacher == "theirs"


def test_fresh_prior_samples_only_from_a_generator_with_a_prior():
    spec = CustomizeSpec.model_validate({"classes": ["a", "b"]})
    assert resolve(spec, "cpu", FakeTeacher()).distillation.fresh_share == BUDGETS["cpu"]["distillation"]["fresh_share"]
    fourier = spec.model_copy(update={"synthesis": spec.synthesis.model_copy(update={"generator": "fourier"})})
    assert resolve(fourier, "cpu", FakeTeacher()).distillation.fresh_share == 0.0
    body = {"classes": ["a", "b"], "synthesis": {"generator": "fourier"}, "distillation": {"fresh_share": 0.2}}
    mine = CustomizeSpec.model_validate(body)
    assert resolve(mine, "cpu", FakeTeacher()).distillation.fresh_share == 0.2  # a user may ask for them


def test_auto_without_a_decoder_is_refused_and_a_job_says_which_image_prior_it_uses():
    """No silent chance students: "auto" for a teacher with no paired decoder (any open_clip model) and no decoder named
    would draw Fourier noise; it is refused with its own code and what to do. A resolved spec names its generator,
    decoder and prior; Fourier asked for by name runs, with a warning to show."""
    spec = CustomizeSpec.model_validate({"classes": ["a", "b"]})
    with pytest.raises(NoImagePriorError, match="decoders pull") as refused:
        resolve(spec, "cpu", FakeTeacher("RN50", paired_decoder=None))
    assert refused.value.code == "no_image_prior" and '"generator": "fourier"' in str(refused.value)
    paired = resolve(spec, "cpu", FakeTeacher()).synthesis
    assert (paired.generator, paired.decoder, paired.prior) == ("decoder", "shapes-vae", "fitted")
    named = CustomizeSpec.model_validate({"classes": ["a", "b"], "synthesis": {"decoder": "taesd", "prior": "pool"}})
    mine = resolve(named, "cpu", FakeTeacher("RN50", paired_decoder=None)).synthesis
    assert (mine.generator, mine.decoder, mine.prior) == ("decoder", "taesd", "pool")
    fourier = CustomizeSpec.model_validate({"classes": ["a", "b"], "synthesis": {"generator": "fourier"}})
    assert resolve(fourier, "cpu", FakeTeacher("RN50", paired_decoder=None)).synthesis.decoder is None
    assert "near chance" in (noise_generator_warning("fourier") or "") and noise_generator_warning("decoder") is None
    assert with_image_prior(paired, FakeTeacher()) == paired  # written out once; applying it again changes nothing


def test_students_and_their_export_facts_come_from_the_registry():
    assert set(get_args(ExportFormat)) == set(EXPORT_FORMATS)
    with pytest.raises(ValidationError) as unknown:
        CustomizeSpec.model_validate({"classes": ["a", "b"], "student": {"arch": "vgg16"}})
    assert unknown.value.errors()[0]["type"] == "unknown_student"
    STUDENTS.add("onnx_only", StudentEntry("test", "core.students:build_tiny_cnn", None, 8.0, 98_970, export_formats=("onnx",)))
    try:
        assert CustomizeSpec.model_validate({"classes": ["a", "b"], "student": {"arch": "onnx_only"}, "export": {"formats": ["onnx"]}})
        with pytest.raises(ValidationError) as refused:
            CustomizeSpec.model_validate({"classes": ["a", "b"], "student": {"arch": "onnx_only"}})  # torchscript by default
        assert refused.value.errors()[0]["type"] == "unsupported_export_format"
        budgets = dict(BUDGETS["cpu"]["student"])
        BUDGETS["cpu"]["student"]["arch"] = "onnx_only"  # a budget's student is checked when the spec is resolved
        try:
            with pytest.raises(UnsupportedExportError):
                resolve(CustomizeSpec.model_validate({"classes": ["a", "b"]}), "cpu", FakeTeacher())
        finally:
            BUDGETS["cpu"]["student"].update(budgets)
    finally:
        STUDENTS.remove("onnx_only")


def test_auto_draws_the_pool_for_a_teacher_without_a_decoder_and_noise_never_silently():
    from core.spec import NoImagePriorError, SynthesisSpec, generator_for, with_image_prior
    from tests.core.teacher_facts import BundledTeacherFacts

    facts = BundledTeacherFacts(name="RN50@/models/rn50.pt", paired_decoder=None)
    pool = SynthesisSpec(pool="pool_" + "2" * 26)
    assert generator_for(pool, None) == ("pool", None) and generator_for(pool, "shapes-vae") == ("decoder", "shapes-vae")
    assert with_image_prior(pool, facts).generator == "pool"
    with pytest.raises(NoImagePriorError, match="image pool"):
        with_image_prior(SynthesisSpec(), facts)
    with pytest.raises(ValidationError, match=r'generator "pool" draws the images of synthesis\.pool'):
        SynthesisSpec(generator="pool")
