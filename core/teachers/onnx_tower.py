"""The teacher's image tower under onnxruntime, fp32 or dynamic INT8, chosen per job by measured agreement.

On a CPU worker the teacher's image tower is most of a job's inference time outside synthesis (labelling pools,
calibration, coverage): open_clip's ViT-B-32 at 224 px costs ~100 ms per image on 2 cores in torch, and onnxruntime
with its MatMul weights in INT8 cuts that two- to threefold (bench/teacher_speed.py measures all three). INT8 is an
approximation whose error depends on the weights, so it is never assumed good: ``choose_image_encoder`` measures it
against the torch teacher on the job's own images and classes and takes it only when the embeddings and the zero-shot
top-1 agree; otherwise the fp32 tower, exact to float rounding, serves. Towers are cached per teacher weights digest,
so the export and quantisation (seconds to a minute) happen once per teacher and machine. Pure ML: nothing here knows
about jobs, the API or the worker.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from core.bank import teacher_sha256
from core.export import _ORT_LOG_ERRORS_ONLY, INPUT_NAME, MIN_OPSET, OUTPUT_NAME, ExportError, export_onnx
from core.teachers.base import Teacher

OUTPUT = "embeddings"  # the tower's output name (core.export names a student's "logits")
PRECISIONS = ("fp32", "int8")
CACHE_FOLDER = "teacher-onnx"  # under the cache directory: <sha256[:40]>-<precision>.onnx
DIGEST_CHARS = 40
METADATA_KEY = "clipforge_teacher_tower"  # JSON of what the file was built from; a mismatch rebuilds it
ENCODE_BATCH = 32  # images per onnxruntime call: bounds activation memory (ViT-B-32 at 224 px: ~0.3 GB per 32)
EXPORT_ATOL = 1e-4  # the fp32 tower must reproduce torch's unit embeddings to this, or the export fails

# The INT8 tower is taken only when both hold on the job's images and classes.
# Lowest per-image cosine between INT8 and torch embeddings: a floor against a broken quantisation (a healthy one
# measured 0.999-0.99998 on every tower in tests/core/test_onnx_tower.py). Labels can flip well above it, as a
# CLIP's top two classes are often ~0.01 apart in cosine: MIN_TOP1 checks those.
MIN_COSINE = 0.98
# Lowest share of images whose zero-shot top-1 class INT8 keeps: at most 1 label in 50 may change; the student learns
# from these labels, and more would teach it the quantisation's errors rather than the teacher.
MIN_TOP1 = 0.98


class _ImagePath(nn.Module):
    """Normalisation, the image tower and L2 normalisation: ``Teacher.encode_image`` on pixels at the teacher's size."""

    def __init__(self, teacher: Teacher) -> None:
        super().__init__()
        model = teacher.model
        # open_clip's encode_image is visual(image): export the tower alone (the text tower would be copied and traced
        # for nothing). Any other model keeps its own encode_image.
        self.encoder: nn.Module = model.visual if _encode_image_is_visual(model) else model
        self.visual_only = self.encoder is not model
        self.register_buffer("mean", teacher.mean.detach().float().cpu().clone())
        self.register_buffer("std", teacher.std.detach().float().cpu().clone())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        normalized = (pixels - self.mean) / self.std
        features = self.encoder(normalized) if self.visual_only else self.encoder.encode_image(normalized)
        return F.normalize(features.float(), dim=-1)


def _encode_image_is_visual(model: nn.Module) -> bool:
    from open_clip.model import CLIP, CustomTextCLIP

    encode = getattr(type(model), "encode_image", None)
    return hasattr(model, "visual") and encode in (CLIP.encode_image, CustomTextCLIP.encode_image)


def _tower_facts(teacher: Teacher) -> dict[str, Any]:
    """What a cached file must have been built from, besides the weights its name carries."""
    return {
        "teacher_sha256": teacher_sha256(teacher),
        "image_size": teacher.image_size,
        "mean": [round(float(v), 8) for v in teacher.mean.flatten().tolist()],
        "std": [round(float(v), 8) for v in teacher.std.flatten().tolist()],
    }


def export_image_tower(teacher: Teacher) -> bytes:
    """The teacher's image path as ONNX (opset core.export.MIN_OPSET): input "pixels" (N, 3, S, S) float32 in [0, 1] at
    S = teacher.image_size, output "embeddings" (N, D) unit rows. Verified against torch by core.export.export_onnx
    (batches of 3 and 1, within EXPORT_ATOL); the same teacher gives the same bytes. Raises core.export.ExportError."""
    metadata = {METADATA_KEY: json.dumps({**_tower_facts(teacher), "precision": "fp32"}, sort_keys=True)}
    with _mha_fastpath_off(), warnings.catch_warnings():
        # The tracer flags the shape checks inside F.multi_head_attention_forward (a ResNet's attention pool): constant
        # for a given tower, as the parity check that export_onnx runs on two batch sizes confirms.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        exported = export_onnx(_ImagePath(teacher).eval(), teacher.image_size, opset=MIN_OPSET, metadata=metadata, atol=EXPORT_ATOL)
    return _rename_output(exported, OUTPUT_NAME, OUTPUT)


@contextmanager
def _mha_fastpath_off() -> Iterator[None]:
    # Under no_grad in eval mode nn.MultiheadAttention (open_clip's ViT attention) takes a fused kernel,
    # aten::_native_multi_head_attention, that no ONNX exporter knows; the plain path it falls back to is the same maths.
    # A process-wide switch, restored at once: another thread's attention meanwhile runs the plain path, no less exact.
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _rename_output(onnx_bytes: bytes, old: str, new: str) -> bytes:
    proto = onnx.load_model_from_string(onnx_bytes)
    graph = proto.graph
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
        node.input[:] = [new if name == old else name for name in node.input]
    for value in [*graph.output, *graph.value_info]:
        if value.name == old:
            value.name = new
    return proto.SerializeToString()


def quantize_tower_int8(onnx_bytes: bytes) -> bytes:
    """A dynamic INT8 copy of an exported tower: MatMul/Gemm weights stored int8 (per tensor), their activations
    quantised per call (u8s8 kernels), no calibration; metadata kept, with precision "int8". Raises ExportError.

    Conv stays fp32. A ResNet's convs as dynamic ConvInteger ran slower than fp32 here (RN50 at 224 px, 2 threads,
    onnxruntime 1.32: 55 ms per image with u8 weights, 185 with s8, against 39 in fp32; MatMul only: 35), and the
    onnxruntime versions this project allows do not all run s8 ConvInteger at all. A ViT's one conv is its patch
    embedding, a small share of its time; every other weight of either tower (a ViT's blocks, a ResNet's attention
    pool) is a MatMul or Gemm.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="clipforge-tower-") as folder, _quiet_quantizer():
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(_without_initializer_identities(onnx_bytes))
        try:
            quantize_dynamic(source, target, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
        except Exception as exc:
            raise ExportError(f"INT8 quantization of the image tower failed: {type(exc).__name__}: {exc}") from exc
        proto = onnx.load(str(target))
    metadata = {p.key: p.value for p in onnx.load_model_from_string(onnx_bytes).metadata_props}
    if METADATA_KEY in metadata:
        metadata[METADATA_KEY] = json.dumps({**json.loads(metadata[METADATA_KEY]), "precision": "int8"}, sort_keys=True)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


class _DropPreProcessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    # quantize_dynamic advises (a root-logger warning, every call) a pre-processing pass that dynamic MatMul quantisation
    # does not need; it would only clutter job logs.
    advice = _DropPreProcessAdvice()
    logging.getLogger().addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)


def _without_initializer_identities(onnx_bytes: bytes) -> bytes:
    """The model with every Identity of an initializer bypassed (its readers read the initializer itself).

    The exporter stores equal initializers once and gives the other users an Identity of it (all-zero biases, the
    zero-initialised last BatchNorm of open_clip's ResNet blocks folded into its conv); onnxruntime's quantizer takes
    only an initializer for a weight and would leave such a MatMul in fp32 (fail on such a Conv)."""
    proto = onnx.load_model_from_string(onnx_bytes)
    graph = proto.graph
    initializers = {init.name for init in graph.initializer}
    outputs = {value.name for value in graph.output}
    alias = {
        node.output[0]: node.input[0]
        for node in graph.node
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in outputs
    }
    if not alias:
        return onnx_bytes
    kept = [node for node in graph.node if not (node.op_type == "Identity" and node.output[0] in alias)]
    for node in kept:
        node.input[:] = [alias.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(kept)
    return proto.SerializeToString()


class OnnxImageTower:
    """An exported tower in an onnxruntime session on the CPU: ``encode`` keeps ``Teacher.encode_image``'s contract
    (pixels in [0, 1], any size, resized as the teacher resizes; unit float32 embeddings on the CPU)."""

    def __init__(self, model: bytes | Path, image_size: int, precision: str, *, batch_size: int = ENCODE_BATCH) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same cores torch would use, no more
        options.inter_op_num_threads = 1
        options.log_severity_level = _ORT_LOG_ERRORS_ONLY
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
        self.image_size = int(image_size)
        self.precision = precision
        self.batch_size = int(batch_size)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.detach().to("cpu", torch.float32)
        if pixels.shape[-1] != self.image_size or pixels.shape[-2] != self.image_size:
            size = (self.image_size, self.image_size)  # Teacher.normalize's resize, call for call
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
        if len(pixels) == 0:  # onnxruntime's reshapes reject a batch of 0: one blank image gives the width
            return self.encode(pixels.new_zeros(1, *pixels.shape[1:]))[:0]
        chunks = [self.session.run([OUTPUT], {INPUT_NAME: chunk.contiguous().numpy()})[0] for chunk in pixels.split(self.batch_size)]
        return torch.from_numpy(np.concatenate(chunks))

    __call__ = encode


def tower_path(teacher: Teacher, cache_dir: Path, precision: str) -> Path:
    return Path(cache_dir) / CACHE_FOLDER / f"{teacher_sha256(teacher)[:DIGEST_CHARS]}-{precision}.onnx"


def cached_tower(teacher: Teacher, cache_dir: Path, precision: str) -> OnnxImageTower:
    """The teacher's tower at ``precision`` from ``<cache_dir>/teacher-onnx``, exported (and quantised) on first use,
    and again when the file is unreadable by onnxruntime or was built from other facts (size, normalisation)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    path = tower_path(teacher, cache_dir, precision)
    tower = _load(path, teacher, precision)
    if tower is None:
        onnx_bytes = export_image_tower(teacher) if precision == "fp32" else quantize_tower_int8(_fp32_bytes(teacher, cache_dir))
        _write_atomic(path, onnx_bytes)
        tower = OnnxImageTower(path, teacher.image_size, precision)
    return tower


def _fp32_bytes(teacher: Teacher, cache_dir: Path) -> bytes:
    path = tower_path(teacher, cache_dir, "fp32")
    if _load(path, teacher, "fp32") is None:
        _write_atomic(path, export_image_tower(teacher))
    return path.read_bytes()


def _load(path: Path, teacher: Teacher, precision: str) -> OnnxImageTower | None:
    if not path.is_file():
        return None
    try:
        tower = OnnxImageTower(path, teacher.image_size, precision)
        built_from = json.loads(tower.metadata[METADATA_KEY])
    except Exception:  # truncated, corrupt or foreign: rebuilt by the caller
        return None
    if built_from != {**_tower_facts(teacher), "precision": precision}:
        return None
    return tower


def _write_atomic(path: Path, data: bytes) -> None:
    # A reader (another worker) sees the old file or the whole new one, never a partial write.
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


Encoder = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def tower_agreement(
    reference: Encoder,
    candidate: Encoder,
    pixels: torch.Tensor,
    classifier: torch.Tensor,
    logit_scale: float,
    *,
    batch_size: int = ENCODE_BATCH,
) -> dict[str, float | int]:
    """How closely ``candidate`` reproduces ``reference`` on ``pixels``: per-image cosine of their embeddings (min and
    mean), the share of images whose zero-shot top-1 over ``classifier`` (K, D) unit rows is the same, and the largest
    zero-shot logit (``logit_scale`` * cosine) difference."""
    if len(pixels) == 0:
        raise ValueError("tower_agreement needs at least one image")
    classifier = classifier.detach().float().cpu()
    ref = torch.cat([reference(chunk).detach().float().cpu() for chunk in pixels.split(batch_size)])
    cand = torch.cat([candidate(chunk).detach().float().cpu() for chunk in pixels.split(batch_size)])
    cosine = F.cosine_similarity(ref.double(), cand.double(), dim=-1)
    ref_logits, cand_logits = logit_scale * ref @ classifier.T, logit_scale * cand @ classifier.T
    return {
        "images": len(pixels),
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
        "top1": float((ref_logits.argmax(1) == cand_logits.argmax(1)).double().mean()),
        "max_abs_logit_difference": float((ref_logits - cand_logits).abs().max()),
    }


def choose_image_encoder(
    teacher: Teacher,
    pixels: torch.Tensor,
    classifier: torch.Tensor,
    *,
    cache_dir: Path,
    min_cosine: float = MIN_COSINE,
    min_top1: float = MIN_TOP1,
) -> tuple[Encoder, dict[str, Any]]:
    """The image encoder a CPU job should use, and the record of why (for the job's metrics).

    The INT8 tower when, on ``pixels`` (the job's images) and ``classifier`` (its classes), its embeddings keep a
    cosine of at least ``min_cosine`` to the torch teacher's on every image and its top-1 on at least ``min_top1`` of
    them; the fp32 tower otherwise. A teacher on an accelerator keeps torch, and so does one whose tower cannot be
    exported or quantised (the record says why).
    """
    if teacher.device.type != "cpu":
        reason = f"the teacher runs on {teacher.device.type}: onnxruntime towers serve CPU teachers only"
        return teacher.encode_image, {"backend": "torch", "reason": reason}
    thresholds = {"min_cosine": min_cosine, "min_top1": min_top1}
    try:
        int8 = cached_tower(teacher, cache_dir, "int8")
    except Exception as exc:  # an architecture the exporter or onnxruntime cannot take, a full disk: torch still serves
        return teacher.encode_image, {"backend": "torch", "reason": f"no onnxruntime tower: {type(exc).__name__}: {exc}"}
    agreement = tower_agreement(teacher.encode_image, int8.encode, pixels, classifier, teacher.logit_scale)
    measured = f"cosine_min {agreement['cosine_min']:.4f}, top1 {agreement['top1']:.4f} on {agreement['images']} images"
    if agreement["cosine_min"] >= min_cosine and agreement["top1"] >= min_top1:
        reason = f"INT8 agrees with the torch teacher ({measured}; needs cosine_min >= {min_cosine}, top1 >= {min_top1})"
        return int8.encode, {"backend": "onnxruntime", "precision": "int8", "agreement": agreement, **thresholds, "reason": reason}
    del int8  # release its session before loading the fp32 one
    fp32 = cached_tower(teacher, cache_dir, "fp32")
    failed = [
        f"cosine_min {agreement['cosine_min']:.4f} < {min_cosine}" if agreement["cosine_min"] < min_cosine else "",
        f"top1 {agreement['top1']:.4f} < {min_top1}" if agreement["top1"] < min_top1 else "",
    ]
    reason = f"INT8 disagrees with the torch teacher ({', '.join(f for f in failed if f)} on {agreement['images']} images): fp32"
    return fp32.encode, {"backend": "onnxruntime", "precision": "fp32", "agreement": agreement, **thresholds, "reason": reason}
