"""`clipforge bench speed`: what a student buys, measured in one run on this machine.

- The exported student under onnxruntime against the teacher's image tower plus its zero-shot head (torch; and ONNX
  when the tower exports), at batch 1 and batch 32: median latency and images per second, and the ratio.
- Optionally its INT8 copy (``core.export.quantize_onnx_int8``, calibrated on the teacher's decoder prior samples,
  i.e. synthesized images) with the accuracy of both on shape8 test renders.
- The engine's synthesis throughput: images x steps per second, batched as the engine runs it against one image at a
  time (decoder generator, matching loss through the teacher, forward and backward).

Every figure comes from the same process with the same thread count, so the ratios hold on a busy machine even when
the absolute times do not.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bench.tasks import get_task
from core.artifacts import TFLITE_FILE
from core.export import onnx_metadata, quantize_onnx_int8, run_onnx
from core.teachers.base import Teacher

BATCHES = (1, 32)
CALIBRATION_IMAGES = 256
SYNTHESIS_BATCH = 64  # images optimised together, as the engine's cpu budget does per step (batch_size 256 / 4 cores' worth)


@dataclass
class Timing:
    model: str
    batch: int
    median_ms: float
    images_per_second: float


def median_ms(run: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


def ort_session(onnx_bytes: bytes, threads: int):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def time_batches(name: str, size: int, repeats: int, runner: Callable[[np.ndarray], Callable[[], object]]) -> list[Timing]:
    """A runtime's median latency at each of BATCHES: ``runner(pixels)`` returns the call that runs that batch."""
    timings = []
    for batch in BATCHES:
        pixels = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
        ms = median_ms(runner(pixels), repeats)
        timings.append(Timing(name, batch, round(ms, 3), round(batch * 1000 / ms, 1)))
    return timings


def time_onnx(name: str, onnx_bytes: bytes, size: int, threads: int, repeats: int) -> list[Timing]:
    session = ort_session(onnx_bytes, threads)
    input_name = session.get_inputs()[0].name
    return time_batches(name, size, repeats, lambda pixels: lambda: session.run(None, {input_name: pixels}))


def time_openvino(name: str, onnx_bytes: bytes, size: int, threads: int, repeats: int) -> list[Timing]:
    """The student as the job's OpenVINO IR export runs it (converted from the ONNX file, CPU plugin, f32)."""
    import openvino as ov

    from core.export import export_openvino

    pixels = np.random.default_rng(0).random((4, 3, size, size), dtype=np.float32)
    xml, weights, _ = export_openvino(onnx_bytes, pixels)
    core = ov.Core()
    model = core.read_model(xml.decode(), ov.Tensor(np.frombuffer(weights, np.uint8)))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    return time_batches(name, size, repeats, lambda pixels: lambda: request.infer([pixels]))


def time_tflite(name: str, tflite_bytes: bytes, size: int, threads: int, repeats: int) -> list[Timing]:
    """The job's TFLite export as the LiteRT interpreter runs it (XNNPACK on the CPU), resized to each batch."""
    from ai_edge_litert.interpreter import Interpreter

    def runner(pixels: np.ndarray) -> Callable[[], None]:
        interpreter = Interpreter(model_content=tflite_bytes, num_threads=threads)  # one per batch shape
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, list(pixels.shape))
        interpreter.allocate_tensors()

        def run() -> None:
            interpreter.set_tensor(index, pixels)
            interpreter.invoke()

        return run

    return time_batches(name, size, repeats, runner)


class ZeroShot(torch.nn.Module):
    """The teacher as a classifier: image tower, unit features, scaled cosine against the class embeddings."""

    def __init__(self, teacher: Teacher, classifier: torch.Tensor) -> None:
        super().__init__()
        self.visual, self.mean, self.std = teacher.model.visual, teacher.mean, teacher.std
        self.register_buffer("classifier", classifier)
        self.scale = teacher.logit_scale

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.visual((pixels - self.mean) / self.std)
        return self.scale * torch.nn.functional.normalize(features, dim=-1) @ self.classifier.T


def time_torch(name: str, model: torch.nn.Module, size: int, repeats: int) -> list[Timing]:
    timings = []
    model.eval()
    for batch in BATCHES:
        pixels = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            ms = median_ms(lambda pixels=pixels: model(pixels), repeats)
        timings.append(Timing(name, batch, round(ms, 3), round(batch * 1000 / ms, 1)))
    return timings


def teacher_onnx(model: torch.nn.Module, size: int) -> bytes | str:
    """The zero-shot teacher as ONNX, or why it would not export."""
    import io

    try:
        buffer = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(
                model, (torch.rand(1, 3, size, size),), buffer, input_names=["pixels"], output_names=["logits"],
                dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
            )  # fmt: skip
        return buffer.getvalue()
    except Exception as exc:  # an architecture the exporter cannot take: say so in the table
        return f"{type(exc).__name__}: {str(exc)[:200]}"


def synthesis_throughput(teacher: Teacher, classifier: torch.Tensor, repeats: int) -> dict[str, float]:
    """Images x steps per second of one inversion step (decoder generator, matching loss, forward and backward),
    with SYNTHESIS_BATCH images per step against one image per step."""
    from core.generators import create_generator

    out = {}
    for batch in (SYNTHESIS_BATCH, 1):
        generator = create_generator("decoder", batch, teacher.image_size, rng=torch.Generator().manual_seed(0), device=teacher.device)
        optimizer = torch.optim.Adam(generator.parameters(), lr=0.1)
        target = classifier[torch.arange(batch) % len(classifier)]

        def step(generator=generator, optimizer=optimizer, target=target) -> None:
            features = teacher.encode_image(generator())
            loss = (1 - (features * target).sum(-1)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        ms = median_ms(step, repeats)
        out[f"batch_{batch}"] = round(batch * 1000 / ms, 1)
    out["speedup"] = round(out[f"batch_{SYNTHESIS_BATCH}"] / out["batch_1"], 1)
    return out


def accuracy(onnx_bytes: bytes, task_name: str, images: int) -> float:
    task = get_task(task_name)
    card = json.loads(onnx_metadata(onnx_bytes)["clipforge_model_card"])
    order = [card["classes"].index(text) for text in task.class_texts]
    pixels, labels = task.render("test", images, size=card["input"]["shape"][2])
    logits = run_onnx(onnx_bytes, pixels.numpy())[:, order]
    return float((torch.from_numpy(logits).argmax(1) == labels).float().mean())


def measure(onnx_path: Path, *, int8: bool, threads: int, repeats: int, task: str, eval_images: int) -> dict[str, object]:
    from core.synthesis import ClassPrompts, SynthesisConfig, build_targets, prior_sampler
    from core.teachers import create_teacher

    torch.set_num_threads(threads)
    onnx_bytes = onnx_path.read_bytes()
    card = json.loads(onnx_metadata(onnx_bytes)["clipforge_model_card"])
    teacher = create_teacher(card["teacher"]["name"], device="cpu")
    classifier = build_targets(teacher, [ClassPrompts(text) for text in card["classes"]], []).classifier
    student_size = card["input"]["shape"][2]
    zero_shot = ZeroShot(teacher, classifier).eval()

    timings = time_onnx("student (ONNX, fp32)", onnx_bytes, student_size, threads, repeats)
    timings += time_openvino("student (OpenVINO IR, fp32)", onnx_bytes, student_size, threads, repeats)
    tflite = onnx_path.with_name(TFLITE_FILE)  # the job's TFLite export, when it asked for one
    if tflite.is_file():
        timings += time_tflite("student (TFLite, fp32)", tflite.read_bytes(), student_size, threads, repeats)
    timings += time_torch("teacher (torch)", zero_shot, teacher.image_size, repeats)
    exported = teacher_onnx(zero_shot, teacher.image_size)
    teacher_onnx_note = None
    if isinstance(exported, bytes):
        timings += time_onnx("teacher (ONNX)", exported, teacher.image_size, threads, repeats)
    else:
        teacher_onnx_note = exported
    report: dict[str, object] = {
        "student": str(onnx_path),
        "teacher": teacher.name,
        "threads": threads,
        "repeats": repeats,
        "load_average": round(os.getloadavg()[0], 2),  # what else the machine was doing: absolute times depend on it
    }
    if int8:
        decoder = teacher.paired_decoder or "shapes-vae"
        config = SynthesisConfig(generator="decoder", generator_options=(("decoder", decoder), ("prior", "fitted")))
        calibration = prior_sampler(config, student_size, torch.device("cpu"))(CALIBRATION_IMAGES, torch.Generator().manual_seed(0))
        int8_bytes = quantize_onnx_int8(onnx_bytes, calibration.numpy())
        timings += time_onnx("student (ONNX, INT8)", int8_bytes, student_size, threads, repeats)
        report["accuracy"] = {
            "task": task,
            "images": eval_images,
            "fp32": round(accuracy(onnx_bytes, task, eval_images), 4),
            "int8": round(accuracy(int8_bytes, task, eval_images), 4),
        }
        report["size_bytes"] = {"fp32": len(onnx_bytes), "int8": len(int8_bytes)}
    report["timings"] = [asdict(t) for t in timings]
    by = {(t.model, t.batch): t for t in timings}
    report["student_speedup"] = {
        f"batch_{b}": round(by[("teacher (torch)", b)].median_ms / by[("student (ONNX, fp32)", b)].median_ms, 1) for b in BATCHES
    }
    if ("teacher (ONNX)", 1) in by:  # the like-for-like ratio: both under onnxruntime
        report["student_speedup_onnx"] = {
            f"batch_{b}": round(by[("teacher (ONNX)", b)].median_ms / by[("student (ONNX, fp32)", b)].median_ms, 1) for b in BATCHES
        }
    report["teacher_onnx"] = teacher_onnx_note or "exported"
    report["synthesis_images_x_steps_per_second"] = synthesis_throughput(teacher, classifier, max(5, repeats // 4))
    return report


def to_markdown(report: dict, command: str) -> str:
    lines = [
        "# The student's speed against its teacher",
        "",
        f"Student `{report['student']}`, teacher `{report['teacher']}`; {report['threads']} CPU thread(s) for every model,",
        f"median of {report['repeats']} runs after 3 warm-up runs, all in one process (the ratios hold on a busy machine;",
        f"the 1-minute load average was {report.get('load_average', 'not recorded')} when it started).",
        "Reproduce with:",
        "",
        f"    {command}",
        "",
        "| model | batch | median latency (ms) | images/s |",
        "|---|---:|---:|---:|",
    ]
    for t in report["timings"]:
        lines.append(f"| {t['model']} | {t['batch']} | {t['median_ms']:.3f} | {t['images_per_second']:,.1f} |")
    speedup = report["student_speedup"]
    faster = f"**{speedup['batch_1']}x** faster than the torch teacher at batch 1 and **{speedup['batch_32']}x** at batch 32"
    lines += ["", f"The student (onnxruntime) is {faster}."]
    if "student_speedup_onnx" in report:
        onnx_speedup = report["student_speedup_onnx"]
        b1, b32 = onnx_speedup["batch_1"], onnx_speedup["batch_32"]
        lines.append(f"Like for like, both under onnxruntime: **{b1}x** at batch 1 and **{b32}x** at batch 32.")
    if report["teacher_onnx"] != "exported":
        lines.append(f"The teacher did not export to ONNX here: {report['teacher_onnx']}.")
    if "accuracy" in report:
        acc, size = report["accuracy"], report["size_bytes"]
        lines += [
            "",
            f"INT8 (static quantization, QDQ, calibrated on {CALIBRATION_IMAGES} synthesized images): accuracy on {acc['images']:,} "
            f"{acc['task']} test renders {acc['int8']:.4f} against fp32 {acc['fp32']:.4f} "
            f"({100 * (acc['int8'] - acc['fp32']):+.2f} points); file {size['int8']:,} bytes against {size['fp32']:,}.",
        ]
    synth = report["synthesis_images_x_steps_per_second"]
    lines += [
        "",
        f"Synthesis (decoder generator, matching loss through the teacher, forward and backward): {synth[f'batch_{SYNTHESIS_BATCH}']:,.1f} "
        f"images x steps per second with {SYNTHESIS_BATCH} images per step, {synth['batch_1']:,.1f} one image at a time "
        f"({synth['speedup']}x).",
        "",
    ]
    return "\n".join(lines)
