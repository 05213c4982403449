"""What the teacher's image tower costs per image under torch, onnxruntime fp32 and onnxruntime dynamic INT8
(core.teachers.onnx_tower), and how far INT8 moves its embeddings, for open_clip architectures and the bundled teachers.

Pretrained weights cannot be downloaded here, and speed does not depend on them: an open_clip architecture is built
from its config at its native input size with random weights. Its INT8 cosine is therefore only indicative (random
towers can map every image to nearly one embedding; random ResNets do, their residual branches initialised to zero).
Every time is also stated as a ratio to shapes-mini's torch time measured in the same run, and the load average is
recorded at the start and the end: on a shared machine the absolute times move, the ratios much less.

    python -m bench.teacher_speed --teachers ViT-B-32,RN50,shapes-mini,fashion-mini --batch 32 --repeats 3 \
        --out bench/results/teacher-speed.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer

from bench.speed import median_ms
from core.teachers import create_teacher
from core.teachers.base import Teacher
from core.teachers.clip_config import TeacherConfig, build_clip
from core.teachers.onnx_tower import OnnxImageTower, export_image_tower, quantize_tower_int8, tower_agreement

REFERENCE = "shapes-mini"  # every time is also given as a ratio to this teacher's torch time
WARMUP = 1  # untimed runs before the timed ones (the first run allocates; ViT-B-32 at batch 32 takes seconds a run)
AGREEMENT_CLASSES = 10  # the teacher's first vocabulary words as the classes of the INT8 top-1 check


def random_teacher(architecture: str, image_size: int | None = None, seed: int = 0) -> Teacher:
    """A teacher of open_clip's ``architecture`` (its bundled config: nothing is downloaded) with random weights, at
    ``image_size`` (default: the architecture's own)."""
    if architecture not in open_clip.list_models():
        raise ValueError(f"{architecture!r} is not an open_clip architecture")
    model = open_clip.get_model_config(architecture)
    if image_size is not None:
        model["vision_cfg"]["image_size"] = image_size
    config = TeacherConfig(name=f"{architecture}-random", model=model, description=f"random-weight {architecture}")
    with torch.random.fork_rng():  # seeded without moving the caller's random stream
        torch.manual_seed(seed)
        clip = build_clip(config)
    tokenizer = SimpleTokenizer(context_length=config.context_length)
    return Teacher(config.name, clip, tokenizer, image_size=config.image_size, mean=config.image_mean, std=config.image_std)


def load_teacher(name: str) -> tuple[Teacher, str]:
    """An open_clip architecture name as a random-weight teacher at its own size; any other name as create_teacher
    finds it (bundled, cached), never downloaded."""
    if name in open_clip.list_models():
        return random_teacher(name), "open_clip config, random weights"
    return create_teacher(name, device="cpu", download=False), "clipforge teacher"


def ms_per_image(run: Any, pixels: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        return median_ms(lambda: run(pixels), repeats, warmup=WARMUP) / len(pixels)


def measure_teacher(name: str, batch: int, repeats: int) -> dict[str, Any]:
    teacher, source = load_teacher(name)
    size = teacher.image_size
    pixels = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    row: dict[str, Any] = {
        "teacher": name,
        "source": source,
        "image_size": size,
        "visual_parameters": sum(p.numel() for p in teacher.model.visual.parameters()),
    }
    row["torch_ms"] = round(ms_per_image(teacher.encode_image, pixels, repeats), 3)
    began = time.perf_counter()
    fp32_bytes = export_image_tower(teacher)
    row["export_s"] = round(time.perf_counter() - began, 1)
    began = time.perf_counter()
    int8_bytes = quantize_tower_int8(fp32_bytes)
    row["quantize_s"] = round(time.perf_counter() - began, 1)
    row["onnx_mb"] = {"fp32": round(len(fp32_bytes) / 2**20, 1), "int8": round(len(int8_bytes) / 2**20, 1)}
    fp32 = OnnxImageTower(fp32_bytes, size, "fp32", batch_size=batch)
    int8 = OnnxImageTower(int8_bytes, size, "int8", batch_size=batch)
    del fp32_bytes, int8_bytes
    row["onnx_fp32_ms"] = round(ms_per_image(fp32.encode, pixels, repeats), 3)
    row["onnx_int8_ms"] = round(ms_per_image(int8.encode, pixels, repeats), 3)
    with torch.no_grad():
        reference = teacher.encode_image(pixels)
        row["fp32_max_abs_difference"] = float((fp32.encode(pixels) - reference).abs().max())
        classes = teacher.class_embeddings(teacher.vocabulary[:AGREEMENT_CLASSES])
    # One chunk (batch_size = all the images), so the reference can be the embeddings computed above.
    agreement = tower_agreement(lambda _: reference, int8.encode, pixels, classes, teacher.logit_scale, batch_size=len(pixels))
    row["int8_agreement"] = {key: round(value, 6) if isinstance(value, float) else value for key, value in agreement.items()}
    # How alike the torch embeddings of these (random) images are: near 1, every image looks the same to the tower and
    # the INT8 cosine says little.
    row["embedding_self_cosine_mean"] = round(float((reference @ reference.T).mean()), 4)
    return row


def measure(names: list[str], batch: int, repeats: int, log: Any = print) -> dict[str, Any]:
    threads = torch.get_num_threads()
    report: dict[str, Any] = {
        "threads": threads,
        "batch": batch,
        "repeats": repeats,
        "warmup": WARMUP,
        "pixels": "uniform random in [0, 1] at each teacher's own size",
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
    }
    rows = []
    for name in [REFERENCE, *(n for n in names if n != REFERENCE)]:  # the reference first: its time is the unit
        log(f"measuring {name} ...")
        rows.append(measure_teacher(name, batch, repeats))
        gc.collect()
    unit = rows[0]["torch_ms"]
    for row in rows:
        row["ratio_to_reference_torch"] = {key: round(row[f"{key}_ms"] / unit, 2) for key in ("torch", "onnx_fp32", "onnx_int8")}
        row["int8_speedup_over_torch"] = round(row["torch_ms"] / row["onnx_int8_ms"], 2)
    report["reference"] = {"teacher": REFERENCE, "torch_ms": unit}
    report["teachers"] = rows
    report["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return report


def to_table(report: dict[str, Any]) -> str:
    lines = [
        f"threads {report['threads']}, batch {report['batch']}, median of {report['repeats']} after {report['warmup']} warm-up; "
        f"load average {report['load_average_start']} -> {report['load_average_end']}",
        f"ratios are to {report['reference']['teacher']}'s torch time, {report['reference']['torch_ms']} ms per image",
        "",
        "| teacher | size | torch ms (x) | onnx fp32 ms (x) | onnx int8 ms (x) | int8/torch speedup | int8 cosine min / mean | "
        "int8 top1 | fp32 max diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["teachers"]:
        ratio, agreement = row["ratio_to_reference_torch"], row["int8_agreement"]
        lines.append(
            f"| {row['teacher']} | {row['image_size']} | {row['torch_ms']:.2f} ({ratio['torch']}) | "
            f"{row['onnx_fp32_ms']:.2f} ({ratio['onnx_fp32']}) | {row['onnx_int8_ms']:.2f} ({ratio['onnx_int8']}) | "
            f"{row['int8_speedup_over_torch']} | {agreement['cosine_min']:.5f} / {agreement['cosine_mean']:.5f} | "
            f"{agreement['top1']:.3f} | {row['fp32_max_abs_difference']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teachers", default="ViT-B-32,RN50,shapes-mini,fashion-mini",
                        help="comma-separated open_clip architectures (random weights) and bundled teachers")  # fmt: skip
    parser.add_argument("--batch", type=int, default=32, help="images per call, for every backend")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per backend (the median is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = [name.strip() for name in args.teachers.split(",") if name.strip()]
    report = measure(names, args.batch, args.repeats, log=lambda line: print(line, file=sys.stderr, flush=True))
    report["command"] = "python -m bench.teacher_speed " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(to_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
