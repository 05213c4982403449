"""End-to-end `customize` on the bundled teacher, with budgets small enough for CI."""

from __future__ import annotations

import io
import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from bench.tasks import get_task
from core.export import onnx_metadata, run_onnx, tflite_metadata
from core.pipeline import (
    CARD_FILE,
    METRICS_FILE,
    ONNX_FILE,
    SAMPLES_FILE,
    TORCHSCRIPT_FILE,
    CustomizeCancelled,
    GeneratorUnavailableError,
    customize,
    resolved_generator,
)
from core.spec import BUDGETS, CustomizeSpec, NoImagePriorError
from tests.servers import QUICK_EXPORT, QUICK_PROBES

# Budgets far below the defaults: these tests check the machinery, the benchmark checks quality.
SMALL = {
    "teacher": "shapes-mini",
    "synthesis": {"images_per_class": 4, "steps": 6, "cutouts": 1, "batch_size": 12, **QUICK_PROBES},
    "distillation": {"epochs": 2, "warmup_epochs": 1, "batch_size": 8},
    "student": {"arch": "tiny_cnn"},
    "export": QUICK_EXPORT,
    "device": "cpu",
}


def small_spec(**overrides) -> CustomizeSpec:
    return CustomizeSpec.model_validate({**SMALL, "classes": ["circle", "square", "star"], **overrides})


def test_customize_end_to_end_produces_verified_artifacts(shapes_teacher):
    events = []
    result = customize(small_spec(student={"arch": "resnet18"}), shapes_teacher, on_progress=events.append)
    assert set(result.artifacts) == {ONNX_FILE, TORCHSCRIPT_FILE, CARD_FILE, SAMPLES_FILE, METRICS_FILE}
    # Progress covers every stage in order and ends at 1.
    stages = list(dict.fromkeys(e.stage for e in events))
    assert stages == ["preparing", "synthesizing", "distilling", "exporting"]
    assert events[-1].fraction == pytest.approx(1.0)
    assert all(b.fraction >= a.fraction for a, b in itertools.pairwise(events))
    assert any(e.eta_seconds is not None for e in events)
    # The ONNX student runs in onnxruntime on real rendered images and carries its card.
    images, _ = get_task("shape8").render("test", 5)
    logits = run_onnx(result.artifacts[ONNX_FILE], images.numpy())
    assert logits.shape == (5, 3) and np.isfinite(logits).all()
    card = json.loads(onnx_metadata(result.artifacts[ONNX_FILE])["clipforge_model_card"])
    assert card["classes"] == ["circle", "square", "star"] and card["teacher"]["name"] == "shapes-mini"
    full_card = json.loads(result.artifacts[CARD_FILE])
    assert full_card["spec"]["synthesis"]["steps"] == 6 and full_card["student"]["arch"] == "resnet18"
    assert "versions" in full_card and "metrics" in full_card
    assert full_card["input"]["mean"] and full_card["input"]["std"]
    metrics = json.loads(result.artifacts[METRICS_FILE])
    assert metrics["budget"] == "cpu" and full_card["spec"]["budget"] == "cpu"  # resolved on this CPU
    quality = metrics["quality"]
    assert 0 <= quality["agreement_heldout_synthesized"] <= 1 and 0 <= quality["agreement_prior_samples"] <= 1
    assert 0 <= quality["agreement_prior_samples_balanced"] <= 1 and 1 <= quality["prior_sample_classes"] <= 3
    assert (metrics["warnings"] == []) == (quality["prior_sample_classes"] == 3)
    assert quality["heldout_synthesized_images"] == 24 and full_card["metrics"]["quality"] == quality
    assert metrics["surrogate_images"] == 12 and set(metrics["stage_seconds"]) == {"preparing", "synthesizing", "distilling", "exporting"}
    grid = Image.open(io.BytesIO(result.artifacts[SAMPLES_FILE]))
    assert grid.width > grid.height > 0  # 3 rows of 8 sample slots
    assert len(result.surrogate) == 12 and torch.equal(torch.bincount(result.surrogate.labels), torch.tensor([4, 4, 4]))


def test_openvino_and_tflite_exports_are_the_onnx_students_with_their_parity_in_the_metrics(shapes_teacher):
    import openvino as ov
    from ai_edge_litert.interpreter import Interpreter

    from core.artifacts import OPENVINO_BIN_FILE, OPENVINO_XML_FILE, TFLITE_FILE

    result = customize(small_spec(export={"formats": ["onnx", "openvino", "tflite"]}), shapes_teacher)
    assert {OPENVINO_XML_FILE, OPENVINO_BIN_FILE, TFLITE_FILE} <= set(result.artifacts)
    assert TORCHSCRIPT_FILE not in result.artifacts
    parities = json.loads(result.artifacts[METRICS_FILE])["export_parity"]
    assert set(parities) == {"openvino", "tflite"}
    for parity in parities.values():
        assert parity["images"] == 12 and parity["max_abs_logit_difference"] <= 1e-4 and parity["top1_agreement"] == 1.0
    assert json.loads(result.artifacts[CARD_FILE])["metrics"]["export_parity"] == parities
    # Each as a user loads it (the .bin beside the .xml; the .tflite resized to the batch) gives the ONNX student's logits
    # on real renders.
    images, _ = get_task("shape8").render("test", 4)
    expected = run_onnx(result.artifacts[ONNX_FILE], images.numpy())
    model = ov.Core().read_model(
        result.artifacts[OPENVINO_XML_FILE].decode(), ov.Tensor(np.frombuffer(result.artifacts[OPENVINO_BIN_FILE], np.uint8))
    )
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert np.allclose(np.asarray(compiled(images.numpy())[0]), expected, atol=1e-4)
    interpreter = Interpreter(model_content=result.artifacts[TFLITE_FILE])
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert list(source["shape"]) == [1, 3, images.shape[-1], images.shape[-1]]
    interpreter.resize_tensor_input(source["index"], list(images.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], images.numpy())
    interpreter.invoke()
    assert np.allclose(interpreter.get_tensor(target["index"]), expected, atol=1e-4)
    # The model card rides in the TFLite file, as in the ONNX file.
    assert json.loads(tflite_metadata(result.artifacts[TFLITE_FILE])["clipforge_model_card"]) == json.loads(
        onnx_metadata(result.artifacts[ONNX_FILE])["clipforge_model_card"]
    )


def test_same_seed_same_student_and_another_seed_another(shapes_teacher):
    spec = small_spec(export={"formats": ["torchscript"]})
    a = customize(spec, shapes_teacher).student.state_dict()
    b = customize(spec, shapes_teacher).student.state_dict()
    c = customize(spec.model_copy(update={"seed": 1}), shapes_teacher).student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_cancellation_stops_between_steps(shapes_teacher):
    calls = {"n": 0}

    def should_cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    with pytest.raises(CustomizeCancelled):
        customize(small_spec(), shapes_teacher, should_cancel=should_cancel)
    assert calls["n"] == 6


def test_image_prompts_and_mixed_classes(shapes_teacher):
    examples = get_task("ambiguous").examples(3)
    spec = CustomizeSpec.model_validate(
        {
            **SMALL,
            "classes": [
                {"name": "donut", "images": ["upload-1"]},
                {"name": "asterisk", "text": "star", "images": ["upload-2"]},
                {"name": "square"},
            ],
            "export": {**QUICK_EXPORT, "formats": ["onnx"]},
        }
    )
    result = customize(spec, shapes_teacher, examples={"donut": examples["donut"], "asterisk": examples["asterisk"]})
    assert ONNX_FILE in result.artifacts and TORCHSCRIPT_FILE not in result.artifacts
    with pytest.raises(ValueError, match="example images"):
        customize(spec, shapes_teacher, examples={})


def test_bn_inversion_baseline_runs(shapes_teacher):
    spec = small_spec(synthesis={**SMALL["synthesis"], "objective": "bn_inversion", "generator": "pixel"}, export={"formats": ["onnx"]})
    result = customize(spec, shapes_teacher)
    assert result.surrogate.images.shape == (12, 3, 32, 32)


def test_auto_generator_uses_the_teachers_paired_decoder(shapes_teacher):
    assert shapes_teacher.paired_decoder == "shapes-vae"
    assert resolved_generator(small_spec(), shapes_teacher) == ("decoder", (("decoder", "shapes-vae"), ("prior", "fitted")))
    assert resolved_generator(small_spec(synthesis={"generator": "fourier"}), shapes_teacher) == ("fourier", ())
    # A teacher without a paired decoder (any open_clip model): auto is refused (core.spec.with_image_prior, at
    # resolution), "decoder" needs a name.
    plain = SimpleNamespace(name="ViT-B-32/openai", paired_decoder=None, device=torch.device("cpu"))
    with pytest.raises(NoImagePriorError):
        customize(small_spec(teacher="ViT-B-32/openai"), plain)  # refused before the teacher is asked anything
    named = small_spec(synthesis={"generator": "decoder", "decoder": "shapes-vae"})
    assert resolved_generator(named, plain) == ("decoder", (("decoder", "shapes-vae"), ("prior", "fitted")))
    with pytest.raises(GeneratorUnavailableError, match="no paired decoder"):
        resolved_generator(small_spec(synthesis={"generator": "decoder"}), plain)


def test_the_budget_asks_fresh_images_only_of_a_decoder(shapes_teacher):
    from core.pipeline import resolved_spec

    decoder = resolved_spec(small_spec(), shapes_teacher)
    fourier = resolved_spec(small_spec(synthesis={"generator": "fourier"}), shapes_teacher)
    mine = resolved_spec(small_spec(synthesis={"generator": "fourier"}, distillation={"fresh_share": 0.25}), shapes_teacher)
    assert decoder.budget == fourier.budget == "cpu"
    assert decoder.distillation.fresh_share == BUDGETS["cpu"]["distillation"]["fresh_share"]
    assert fourier.distillation.fresh_share == 0.0 and mine.distillation.fresh_share == 0.25


def test_samples_png_labels_each_row_with_its_class_name():
    import io

    import numpy as np
    from PIL import Image

    from core.pipeline import LABEL_WIDTH, samples_grid
    from core.synthesis import SurrogateSet

    images, labels = torch.full((12, 3, 32, 32), 0.5), torch.arange(12) % 3
    png = samples_grid(SurrogateSet(images, labels, torch.zeros(12, dtype=torch.long)), ["circle", "square", "star"])
    grid = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    labels_column = grid[:, :LABEL_WIDTH]
    row_height = grid.shape[0] // 3
    # Each row's label cell holds dark text; the three names draw differently.
    cells = [labels_column[k * row_height : (k + 1) * row_height] for k in range(3)]
    assert all((cell < 128).sum() > 20 for cell in cells)
    assert not np.array_equal(cells[0], cells[1]) and not np.array_equal(cells[1], cells[2])
