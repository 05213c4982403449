"""One resolution of a spec's defaults (core.spec.resolve): the worker's pipeline and the API's estimate see the same
job; the default teacher is the service's setting; the spec's device is honoured or the job refused."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch

from api.validation import submission_from_json
from cli.customize import add_commands, build_spec
from core.pipeline import prepare, resolved_spec
from core.spec import BUDGETS, DEFAULT_TEACHER, CustomizeSpec, NoImagePriorError, ResolvedSpec, requested_device, resolve
from core.teachers import create_teacher
from core.teachers.sources import BUNDLED_DIR
from service.errors import ServiceError
from service.settings import Settings
from service.specs import estimated_duration, resolve_submitted

SHAPES = ["circle", "square", "triangle", "star"]
SPECS = [
    {},
    {"student": {"arch": "small_cnn"}},
    {"synthesis": {"generator": "fourier"}, "distillation": {"steps": 1000}},
    {"synthesis": {"generator": "fourier"}, "distillation": {"fresh_share": 0.25}},
    {"distillation": {"epochs": 3}},
    {"budget": "gpu"},
    {"device": "cuda"},
]


def _settings(**fields) -> Settings:
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]


def _submitted(body: dict, settings: Settings) -> dict:
    return submission_from_json({"classes": SHAPES, "seed": 3, **body}, settings).spec


@pytest.mark.parametrize("body", SPECS)
def test_the_worker_and_the_estimate_resolve_a_spec_alike(body, shapes_teacher):
    settings = _settings(device="cpu")
    submitted = _submitted(body, settings)
    estimate_side = resolve_submitted(submitted, settings)
    spec = CustomizeSpec.model_validate(submitted)
    # What the pipeline resolves (on this CPU: a spec's cuda is the estimate's); its preparation may then switch a job
    # with thin classes to their method (core.pipeline.with_thin_class_method), which no estimate can know beforehand.
    worker_side = resolved_spec(spec, shapes_teacher)
    if spec.device == "cuda":
        worker_side = resolve(spec, "cuda", shapes_teacher)  # as a CUDA worker would
    assert isinstance(estimate_side, ResolvedSpec) and estimate_side.model_dump() == worker_side.model_dump()
    assert resolved_spec(worker_side, shapes_teacher) is worker_side  # resolved once: passing it on fills nothing again


def test_a_teacher_without_a_decoder_resolves_alike_in_the_catalogue_and_the_loader(tmp_path):
    # A cached copy of the bundled teacher whose config names no decoder: "auto" refused in either process, Fourier by
    # name resolved alike, with no fresh prior samples.
    folder = tmp_path / "teachers" / "plain-mini"
    shutil.copytree(BUNDLED_DIR / "shapes-mini", folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("decoder")
    config["name"] = "plain-mini"
    (folder / "config.json").write_text(json.dumps(config))
    settings = _settings(device="cpu", cache_dir=tmp_path)
    with pytest.raises(ServiceError) as refused:
        _submitted({"teacher": "plain-mini"}, settings)
    assert refused.value.code == "no_image_prior"
    teacher = create_teacher("plain-mini", device="cpu", cache_dir=tmp_path)
    with pytest.raises(NoImagePriorError):
        resolve(CustomizeSpec.model_validate({"classes": SHAPES, "teacher": "plain-mini"}), "cpu", teacher)
    submitted = _submitted({"teacher": "plain-mini", "synthesis": {"generator": "fourier"}}, settings)
    worker_side = resolve(CustomizeSpec.model_validate(submitted), teacher.device.type, teacher)
    assert worker_side.distillation.fresh_share == 0.0 != BUDGETS["cpu"]["distillation"]["fresh_share"]
    assert resolve_submitted(submitted, settings).model_dump() == worker_side.model_dump()


def test_a_default_job_resolves_to_the_cpu_budget(shapes_teacher):
    spec = prepare(CustomizeSpec.model_validate({"classes": SHAPES, "teacher": "shapes-mini"}), shapes_teacher).spec
    assert (spec.budget, spec.student.arch, spec.distillation.method, spec.distillation.steps) == ("cpu", "small_cnn", "kd", 4000)
    assert spec.distillation.fixed_views == 8
    assert (spec.distillation.fresh_share, spec.synthesis.images_per_class, spec.synthesis.steps) == (0.5, 256, 0)
    assert (spec.synthesis.generator, spec.synthesis.decoder, spec.synthesis.prior) == ("decoder", "shapes-vae", "fitted")


def test_the_default_teacher_is_the_services_setting(shapes_teacher, tmp_path):
    assert CustomizeSpec.model_fields["teacher"].default is None  # the spec's own default defers to the service's
    assert _settings().default_teacher == DEFAULT_TEACHER == "shapes-mini"
    assert _submitted({}, _settings())["teacher"] == DEFAULT_TEACHER
    assert _submitted({"teacher": None}, _settings())["teacher"] == DEFAULT_TEACHER  # null is "the default" too
    # An operator's choice is the default for every job that names none, estimate included.
    operator = _settings(default_teacher="plain-mini", extra_teachers=["plain-mini"])
    named = {"synthesis": {"decoder": "shapes-vae"}}  # a configured name has no paired decoder: "auto" needs one named
    assert _submitted(named, operator)["teacher"] == "plain-mini"
    assert resolve_submitted({"classes": SHAPES, **named}, operator).teacher == "plain-mini"
    # The pipeline names the teacher it was given; the CLI the same default as the service.
    assert resolve(CustomizeSpec(classes=SHAPES), "cpu", shapes_teacher).teacher == "shapes-mini"
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["customize", "--classes", "a,b", "--out", str(tmp_path)])
    assert build_spec(args).teacher == DEFAULT_TEACHER


def test_the_estimate_follows_the_specs_device():
    settings = _settings(device="cpu")
    assert estimated_duration(_submitted({}, settings), settings) is not None  # the cpu budget has reference rates
    assert estimated_duration(_submitted({"device": "cuda"}, settings), settings) is None  # the gpu budget has none
    assert resolve_submitted(_submitted({"device": "cuda"}, settings), settings).budget == "gpu"
    assert resolve_submitted(_submitted({"device": "cpu"}, _settings(device="cuda")), settings).budget == "cpu"


def test_the_worker_honours_the_specs_device_and_never_falls_back():
    from core.devices import DeviceUnavailableError, job_device

    assert requested_device("auto", "cuda:1") == "cuda:1" and requested_device("cpu", "cuda") == "cpu"
    assert job_device("cpu", "auto") == torch.device("cpu")
    assert job_device("auto", "cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError) as caught:
            job_device("cuda", "cpu")  # the user asked for a GPU this worker lacks: refused, not run on the CPU
        assert caught.value.code == "device_unavailable"
