"""Export a trained student to ONNX or TorchScript, verified against PyTorch before the bytes are returned.

Both exporters work on a CPU copy of the model in eval mode, so the caller's model keeps its device
and train/eval modes. The exported graph takes ``pixels`` (N, 3, S, S) float32 in [0, 1] with a
dynamic batch dimension N and returns ``logits`` (N, K). Every export is checked at once: the
reloaded model must agree with PyTorch within ``atol`` on a batch of 3 and on a batch of 1 (the
latter proves that the batch dimension was not baked in), or ``ExportError`` is raised.
"""

from __future__ import annotations

import copy
import inspect
import io
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
MIN_OPSET = 17  # the lowest opset ExportSpec allows
RGB_CHANNELS = 3

# Export traces with 2 images: torch.export specialises a dimension whose example size is 0 or 1,
# so a batch of 1 would pin the batch dimension to 1.
TRACE_BATCH = 2
# Parity batches: 3 (the size used at export is 2, so both differ from it) and 1 (the edge case of a
# dynamic batch: broadcasting and squeezes that assumed N > 1 break here).
CHECK_BATCHES: tuple[int, ...] = (3, 1)
CHECK_SEED = 0  # fixed so a failed check reproduces

# The newest opset the TorchScript-based ("legacy") ONNX exporter writes (torch's private
# ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET; that exporter is frozen); above it only the
# torch.export-based exporter can be used.
LEGACY_MAX_OPSET = 20
# torch < 2.5 has no ``dynamo`` argument and always uses the legacy exporter.
_EXPORT_HAS_DYNAMO_ARG = "dynamo" in inspect.signature(torch.onnx.export).parameters

_ORT_LOG_ERRORS_ONLY = 3  # onnxruntime severity: 0 verbose .. 3 error; keeps its warnings out of job logs


class ExportError(RuntimeError):
    """An export that failed, or whose result does not reproduce the PyTorch model."""

    code = "export_failed"


def export_onnx(
    model: nn.Module,
    image_size: int,
    *,
    opset: int = MIN_OPSET,
    metadata: dict[str, str] | None = None,
    atol: float = 1e-4,
) -> bytes:
    """The ONNX file of ``model`` (input ``pixels``, output ``logits``, dynamic batch), verified.

    ``metadata`` goes into the model's ``metadata_props`` (read it back with ``onnx_metadata``).
    Raises ``ExportError`` if the export fails, the checker rejects the model, the opset written
    is not ``opset``, or onnxruntime's logits differ from PyTorch's by more than ``atol``.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be at least {MIN_OPSET}; got {opset}")
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata keys and values must be strings; got {key!r}: {value!r}")

    cpu_model = _cpu_eval_copy(model)
    example = _example(image_size)
    try:
        with torch.no_grad():
            proto = _to_onnx(cpu_model, example, opset)
    except Exception as exc:
        raise ExportError(f"ONNX export (opset {opset}) failed: {type(exc).__name__}: {exc}") from exc

    written = _default_opset(proto)
    if written != opset:
        raise ExportError(f"ONNX export wrote opset {written}, not the requested {opset}")
    for key, value in metadata.items():
        entry = next((p for p in proto.metadata_props if p.key == key), None) or proto.metadata_props.add(key=key)
        entry.value = value
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported ONNX model is invalid: {exc}") from exc

    onnx_bytes = proto.SerializeToString()
    try:
        session = _session(onnx_bytes)
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load the exported model: {exc}") from exc
    _verify(cpu_model, lambda pixels: session.run([OUTPUT_NAME], {INPUT_NAME: pixels.numpy()})[0], image_size, atol, "ONNX (onnxruntime)")
    return onnx_bytes


def export_torchscript(model: nn.Module, image_size: int, *, atol: float = 1e-4) -> bytes:
    """The TorchScript archive of ``model`` (traced on the CPU), reloaded and verified like ONNX."""
    cpu_model = _cpu_eval_copy(model)
    example = _example(image_size)
    buffer = io.BytesIO()
    try:
        # torch.jit is deprecated (FutureWarning) in this torch, but TorchScript is a format users ask
        # for; the warning would only clutter job logs.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
            # check_trace off: it re-runs the model to compare two traces; the reload check below is stricter.
            traced = torch.jit.trace(cpu_model, example, check_trace=False)
            torch.jit.save(traced, buffer)
            ts_bytes = buffer.getvalue()
            reloaded = torch.jit.load(io.BytesIO(ts_bytes), map_location="cpu")
    except Exception as exc:
        raise ExportError(f"TorchScript export failed: {type(exc).__name__}: {exc}") from exc

    _verify(cpu_model, lambda pixels: reloaded(pixels).numpy(), image_size, atol, "TorchScript")
    return ts_bytes


INT8_CALIBRATION_BATCH = 32


def quantize_onnx_int8(onnx_bytes: bytes, calibration: np.ndarray, *, max_disagreement: float = 0.1) -> bytes:
    """An INT8 copy of an exported student (onnxruntime static quantization, QDQ, per-channel weights), its activation
    ranges calibrated on ``calibration`` pixels (N, 3, S, S) in [0, 1]: synthesized images, never real data.

    The fp32 file's metadata (the model card) is kept. Raises ExportError when quantization fails or the INT8 model
    disagrees with the fp32 one on more than ``max_disagreement`` of the calibration images' predicted classes.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    pixels = np.ascontiguousarray(calibration, dtype=np.float32)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(pixels[i : i + INT8_CALIBRATION_BATCH] for i in range(0, len(pixels), INT8_CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(onnx_bytes)
        try:
            quantize_static(
                str(source), str(target), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            )  # fmt: skip
        except Exception as exc:
            raise ExportError(f"INT8 quantization failed: {type(exc).__name__}: {exc}") from exc
        proto = onnx.load(str(target))
    metadata = onnx_metadata(onnx_bytes)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    int8_bytes = proto.SerializeToString()
    fp32_classes = run_onnx(onnx_bytes, pixels).argmax(1)
    try:
        int8_classes = run_onnx(int8_bytes, pixels).argmax(1)
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot run the INT8 model: {exc}") from exc
    disagreement = float((fp32_classes != int8_classes).mean())
    if disagreement > max_disagreement:
        raise ExportError(f"the INT8 model disagrees with fp32 on {disagreement:.1%} of the calibration images")
    return int8_bytes


PARITY_ATOL = 1e-4  # the largest logit difference a converted format may show against the ONNX file
PARITY_IMAGES = 256  # synthesized images every converted format is checked on


class ExportParityError(ExportError):
    """A converted format whose logits differ from the ONNX file's beyond PARITY_ATOL, or whose top-1 disagrees."""

    code = "export_parity_failed"


def logit_parity(reference: np.ndarray, converted: np.ndarray, what: str) -> dict[str, float | int]:
    """The converted model's largest logit difference and top-1 agreement against ``reference`` on the same images;
    ExportParityError beyond PARITY_ATOL (plus PARITY_RTOL of the largest logit) or below full agreement."""
    difference = float(np.max(np.abs(converted.astype(np.float64) - reference.astype(np.float64)), initial=0.0))
    agreement = float((converted.argmax(1) == reference.argmax(1)).mean())
    parity = {"images": len(reference), "max_abs_logit_difference": difference, "top1_agreement": agreement}
    tolerance = PARITY_ATOL + PARITY_RTOL * float(np.max(np.abs(reference), initial=0.0))
    if difference > tolerance or agreement < 1.0:
        raise ExportParityError(
            f"{what}: logits differ from the ONNX file's by up to {difference:.3g} (tolerance {tolerance:g}), "
            f"top-1 agreement {agreement:.4f}"
        )
    return parity


def export_openvino(onnx_bytes: bytes, images: np.ndarray) -> tuple[bytes, bytes, dict[str, float | int]]:
    """OpenVINO IR (the .xml graph and the .bin weights, fp32) converted from the ONNX file, and its parity with it on
    ``images`` (N, 3, S, S) run by OpenVINO's CPU plugin against onnxruntime."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="clipforge-openvino-") as folder:
        source = Path(folder) / "student.onnx"
        source.write_bytes(onnx_bytes)
        try:
            model = ov.convert_model(str(source))
            ov.save_model(model, str(Path(folder) / "student.xml"), compress_to_fp16=False)
            # f32 inference: the CPU plugin may otherwise run bf16 where the CPU has it (1e-3 logit differences)
            compiled = ov.Core().compile_model(str(Path(folder) / "student.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            converted = np.asarray(compiled(np.ascontiguousarray(images, dtype=np.float32))[0])
        except Exception as exc:
            raise ExportError(f"OpenVINO conversion failed: {exc}") from exc
        xml, weights = (Path(folder) / "student.xml").read_bytes(), (Path(folder) / "student.bin").read_bytes()
    parity = logit_parity(run_onnx(onnx_bytes, images), converted, "OpenVINO IR")
    return xml, weights, parity


TFLITE_BATCH = 1  # a TFLite model is converted for one image (the phone's case); the interpreter resizes its input


def export_tflite(
    student: nn.Module, image_size: int, onnx_bytes: bytes, images: np.ndarray, *, metadata: dict[str, str] | None = None
) -> tuple[bytes, dict[str, float | int]]:
    """The student as a TFLite flatbuffer (litert-torch, fp32; input ``pixels`` (1, 3, S, S) as in the ONNX file,
    resizable to any batch), and its parity with the ONNX file on ``images`` (N, 3, S, S) run by the LiteRT
    interpreter against onnxruntime. ``metadata`` goes into the flatbuffer's named metadata buffers (read it back with
    ``tflite_metadata``), as the ONNX file's does."""
    try:
        import litert_torch
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise ExportError(f"the TFLite export needs litert-torch (pip install litert-torch): {exc}") from exc
    litert_torch.config.show_progress = False  # its progress lines go to stdout, where a CLI writes its JSON
    model = copy.deepcopy(student).cpu().eval()
    example = torch.rand(TFLITE_BATCH, RGB_CHANNELS, image_size, image_size, generator=torch.Generator().manual_seed(CHECK_SEED))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flatbuffer = bytes(litert_torch.convert(model, (example,)).model_content())
        if metadata:
            flatbuffer = _with_tflite_metadata(flatbuffer, metadata)
        interpreter = Interpreter(model_content=flatbuffer)
        source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        interpreter.resize_tensor_input(source["index"], list(images.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(source["index"], np.ascontiguousarray(images, dtype=np.float32))
        interpreter.invoke()
        converted = np.array(interpreter.get_tensor(target["index"]))
    except Exception as exc:
        raise ExportError(f"TFLite conversion failed: {type(exc).__name__}: {exc}") from exc
    return flatbuffer, logit_parity(run_onnx(onnx_bytes, images), converted, "TFLite")


def _with_tflite_metadata(flatbuffer: bytes, metadata: dict[str, str]) -> bytes:
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    entries = list(model.metadata or [])
    for name, value in metadata.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(value.encode(), np.uint8).copy()
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        entries.append(entry)
    model.metadata = entries
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def tflite_metadata(flatbuffer: bytes) -> dict[str, str]:
    """The named metadata buffers of a TFLite file that hold text (the converter's own and ``export_tflite``'s)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    found = {}
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else str(entry.name)
        data = model.buffers[entry.buffer].data
        try:
            found[name] = bytes(data if data is not None else b"").decode()
        except UnicodeDecodeError:
            continue
    return found


def onnx_metadata(onnx_bytes: bytes) -> dict[str, str]:
    """The model-level ``metadata_props`` of an ONNX file."""
    return {p.key: p.value for p in onnx.load_model_from_string(onnx_bytes).metadata_props}


def run_onnx(onnx_bytes: bytes, pixels: np.ndarray) -> np.ndarray:
    """Logits (N, K) of an exported student for ``pixels`` (N, 3, S, S) in [0, 1], via onnxruntime on the CPU.

    Builds a session per call: pass a whole evaluation set at once rather than one image at a time.
    """
    session = _session(onnx_bytes)
    input_name = session.get_inputs()[0].name
    return session.run(None, {input_name: np.ascontiguousarray(pixels, dtype=np.float32)})[0]


def _to_onnx(model: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    # Exporter choice. This torch's default (dynamo=True, torch.export-based) exporter implements
    # opset 18 and up only: asked for 17 (our default) it exports 18 and down-converts, and that
    # conversion fails on the ReduceMean of a global average pool, leaving a model that silently
    # says opset 18. It is also several times slower here (resnet18: ~6 s against ~2.5 s). The
    # TorchScript-based exporter (dynamo=False) writes opsets 17-20 exactly, and on every torch
    # >= 2.2, so it does those; only opsets above its maximum (21-23, which ExportSpec allows) go
    # to the dynamo exporter. The caller verifies the result either way (opset, checker, parity).
    if opset <= LEGACY_MAX_OPSET:
        with tempfile.TemporaryDirectory(prefix="clipforge-onnx-") as tmp, warnings.catch_warnings():
            # Choosing the legacy exporter is deliberate (above); its DeprecationWarning is noise.
            warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")  # its internals' own
            path = Path(tmp) / "model.onnx"
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                **({"dynamo": False} if _EXPORT_HAS_DYNAMO_ARG else {}),
            )
            return onnx.load_model(str(path))
    program = torch.onnx.export(
        model,
        (example,),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
        dynamo=True,
        verbose=False,
    )
    if program is None:  # pragma: no cover - the dynamo exporter always returns its program
        raise RuntimeError("the dynamo exporter returned no program")
    return program.model_proto


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    # A deep copy: moving or switching modes in place would leak into the caller's (maybe training) model.
    return copy.deepcopy(model).cpu().eval()


def _example(image_size: int) -> torch.Tensor:
    # A private generator: drawing from the global one would shift the caller's seeded random stream.
    generator = torch.Generator().manual_seed(CHECK_SEED)
    return torch.rand(TRACE_BATCH, RGB_CHANNELS, image_size, image_size, generator=generator)


def _default_opset(proto: onnx.ModelProto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _verify(cpu_model: nn.Module, run: Callable[[torch.Tensor], np.ndarray], image_size: int, atol: float, what: str) -> None:
    """Compare ``run`` (the exported model) with PyTorch on every check batch; raise ExportError on any failure."""
    for batch, pixels in _check_inputs(image_size):
        with torch.no_grad():
            expected = cpu_model(pixels).numpy()
            try:
                actual = run(pixels)
            except Exception as exc:
                raise ExportError(f"{what} failed on a batch of {batch}: {exc}") from exc
        _check_parity(expected, actual, atol=atol, what=f"{what} on a batch of {batch}")


def _check_inputs(image_size: int) -> list[tuple[int, torch.Tensor]]:
    generator = torch.Generator().manual_seed(CHECK_SEED)
    return [(n, torch.rand(n, RGB_CHANNELS, image_size, image_size, generator=generator)) for n in CHECK_BATCHES]


def _session(onnx_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = _ORT_LOG_ERRORS_ONLY
    return ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])


# float32 arithmetic in another order differs by a few ulps of the largest logit: logits of
# magnitude 1e5 (an untrained or diverged student) cannot agree to 1e-4 absolutely.
PARITY_RTOL = 1e-6


def _check_parity(expected: np.ndarray, actual: np.ndarray, *, atol: float, what: str) -> None:
    """Raise ExportError unless ``actual`` has ``expected``'s shape and lies within
    ``atol + PARITY_RTOL * max|expected|`` of it everywhere (``atol`` for ordinary logits)."""
    if actual.shape != expected.shape:
        raise ExportError(f"{what}: output shape {actual.shape} differs from PyTorch's {expected.shape}")
    if not np.isfinite(actual).all() or not np.isfinite(expected).all():
        side = "PyTorch's" if not np.isfinite(expected).all() else "the export's"
        raise ExportError(f"{what}: {side} outputs contain NaN or infinity")
    diff = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)), initial=0.0))
    tolerance = atol + PARITY_RTOL * float(np.max(np.abs(expected), initial=0.0))
    if diff > tolerance:
        raise ExportError(f"{what}: outputs differ from PyTorch by up to {diff:.3g} (tolerance {tolerance:g})")
