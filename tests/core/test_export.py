from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from core.export import (
    ExportError,
    _check_parity,
    export_onnx,
    export_torchscript,
    onnx_metadata,
    run_onnx,
)
from core.students import Student, create_student

MEAN = (0.48, 0.46, 0.41)
STD = (0.27, 0.26, 0.28)
SIZE = 32


def make(arch: str, num_classes: int = 4) -> Student:
    torch.manual_seed(0)
    return create_student(arch, num_classes, SIZE, mean=MEAN, std=STD)


@pytest.fixture(scope="module")
def tiny_onnx() -> tuple[Student, bytes]:
    student = make("tiny_cnn")
    return student, export_onnx(student, SIZE, metadata={"classes": '["cat", "dog", "fox", "owl"]', "arch": "tiny_cnn"})


def reference(student: nn.Module, pixels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return student.eval()(torch.from_numpy(pixels)).numpy()


def test_tiny_cnn_onnx_runs_at_any_batch(tiny_onnx: tuple[Student, bytes]) -> None:
    student, onnx_bytes = tiny_onnx
    model = onnx.load_model_from_string(onnx_bytes)
    assert [i.name for i in model.graph.input] == ["pixels"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
    pixels = np.random.default_rng(1).random((5, 3, SIZE, SIZE), dtype=np.float32)
    logits = run_onnx(onnx_bytes, pixels)
    assert logits.shape == (5, 4)
    np.testing.assert_allclose(logits, reference(student, pixels), atol=1e-4)


def test_metadata_round_trips(tiny_onnx: tuple[Student, bytes]) -> None:
    meta = onnx_metadata(tiny_onnx[1])
    assert meta["classes"] == '["cat", "dog", "fox", "owl"]'
    assert meta["arch"] == "tiny_cnn"


def test_export_leaves_the_callers_model_alone() -> None:
    student = make("tiny_cnn").train()
    state = {k: v.clone() for k, v in student.state_dict().items()}
    export_onnx(student, SIZE)
    assert student.training and all(m.training for m in student.modules())
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in state.items())  # BN statistics untouched


def test_resnet18_onnx_parity_at_batch_5() -> None:
    student = make("resnet18", num_classes=3)
    onnx_bytes = export_onnx(student, SIZE, opset=18)
    assert next(o.version for o in onnx.load_model_from_string(onnx_bytes).opset_import if o.domain in ("", "ai.onnx")) == 18
    pixels = np.random.default_rng(2).random((5, 3, SIZE, SIZE), dtype=np.float32)
    logits = run_onnx(onnx_bytes, pixels)
    assert logits.shape == (5, 3)
    np.testing.assert_allclose(logits, reference(student, pixels), atol=1e-4)


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:FutureWarning")
def test_torchscript_round_trips() -> None:
    student = make("tiny_cnn")
    ts_bytes = export_torchscript(student, SIZE)
    reloaded = torch.jit.load(io.BytesIO(ts_bytes))
    pixels = torch.rand(5, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels), student.eval()(pixels), atol=1e-5, rtol=0)


class DivergesWhenExported(nn.Module):
    """A real export/eager mismatch: an export-only branch, as models with export workarounds have."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 2)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.head(pixels.mean(dim=(2, 3)))
        if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
            return logits + 0.01  # far above atol
        return logits


class BakesInTheBatch(nn.Module):
    """Turning a shape into a Python int freezes the trace's batch size of 2 into the graph."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.reshape(int(pixels.shape[0]), -1)[:, :2]


def test_onnx_mismatch_raises() -> None:
    with pytest.raises(ExportError, match=r"differ from PyTorch by up to 0\.01") as info:
        export_onnx(DivergesWhenExported(), 8)
    assert info.value.code == "export_failed"
    # The same model passes when the tolerance allows its offset: the check measures, it does not always fail.
    export_onnx(DivergesWhenExported(), 8, atol=0.02)


def test_torchscript_mismatch_raises() -> None:
    with pytest.raises(ExportError, match="TorchScript on a batch of 3"):
        export_torchscript(DivergesWhenExported(), 8)


def test_fixed_batch_is_caught() -> None:
    with pytest.warns(torch.jit.TracerWarning), pytest.raises(ExportError, match="batch of 3"):
        export_onnx(BakesInTheBatch(), 8)


def test_parity_check() -> None:
    expected = np.zeros((3, 4), dtype=np.float32)
    _check_parity(expected, expected + 5e-5, atol=1e-4, what="x")
    with pytest.raises(ExportError, match=r"up to 0\.0002"):
        _check_parity(expected, expected + 2e-4, atol=1e-4, what="x")
    with pytest.raises(ExportError, match="shape"):
        _check_parity(expected, expected[:1], atol=1e-4, what="x")
    with pytest.raises(ExportError, match="NaN"):
        _check_parity(expected, np.full_like(expected, np.nan), atol=1e-4, what="x")


def test_bad_opset_and_metadata() -> None:
    with pytest.raises(ValueError, match="opset"):
        export_onnx(make("tiny_cnn"), SIZE, opset=16)
    with pytest.raises(TypeError):
        export_onnx(make("tiny_cnn"), SIZE, metadata={"classes": 3})  # type: ignore[dict-item]


@pytest.mark.slow
def test_opsets_above_the_legacy_exporter_use_dynamo() -> None:
    # Opsets 21-23 (allowed by ExportSpec) go through the torch.export-based exporter: same contract.
    student = make("tiny_cnn")
    onnx_bytes = export_onnx(student, SIZE, opset=21, metadata={"arch": "tiny_cnn"})
    model = onnx.load_model_from_string(onnx_bytes)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 21
    assert onnx_metadata(onnx_bytes) == {"arch": "tiny_cnn"}
    pixels = np.random.default_rng(3).random((5, 3, SIZE, SIZE), dtype=np.float32)
    np.testing.assert_allclose(run_onnx(onnx_bytes, pixels), reference(student, pixels), atol=1e-4)


def test_an_int8_copy_keeps_the_model_card_and_the_fp32_predictions(tiny_onnx):
    from core.export import quantize_onnx_int8

    _, onnx_bytes = tiny_onnx
    generator = torch.Generator().manual_seed(3)
    calibration = torch.rand(96, 3, 32, 32, generator=generator).numpy()
    int8 = quantize_onnx_int8(onnx_bytes, calibration, max_disagreement=1.0)
    assert onnx_metadata(int8) == onnx_metadata(onnx_bytes)
    ops = {node.op_type for node in onnx.load_model_from_string(int8).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # quantized (QDQ), not a copy
    fp32_logits, int8_logits = run_onnx(onnx_bytes, calibration), run_onnx(int8, calibration)
    assert int8_logits.shape == fp32_logits.shape and np.corrcoef(fp32_logits.ravel(), int8_logits.ravel())[0, 1] > 0.95
    with pytest.raises(ExportError):
        quantize_onnx_int8(onnx_bytes[:100], calibration)  # not a model


def test_a_converted_format_off_the_onnx_logits_fails_with_its_code() -> None:
    import numpy as np

    from core.export import ExportParityError, logit_parity

    reference = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]], dtype=np.float32)
    assert logit_parity(reference, reference + 5e-5, "same")["top1_agreement"] == 1.0
    for converted in (reference + 1e-3, reference[:, ::-1].copy()):  # off by 1e-3; another top-1
        with pytest.raises(ExportParityError) as failed:
            logit_parity(reference, converted, "OpenVINO IR")
        assert failed.value.code == "export_parity_failed"
