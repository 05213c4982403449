"""A GPU check of the real path, ready to run when a CUDA machine is lent: one `gpu`-budget job end to end on a
random-weight ViT-B-32 teacher at 224 px drawing through a random-weight TAESD decoder (diffusers' AutoencoderTiny; no
download needed), then seconds per stage, the synthesis throughput, the TFLOP/s the teacher's forward and backward
passes achieved, and peak memory. It fails clearly, with exit status 2 and no traceback, when CUDA was asked for and
is absent or was not used.

    python -m bench.gpu_check                 # CUDA, sized for under 5 minutes on one data-centre GPU
    python -m bench.gpu_check --device cpu --image-size 64 --images-per-class 2 --steps 2 --distill-steps 4   # a smoke run
    python -m bench.gpu_check --pool runs/pools/fashion   # also the pool path: two pool jobs on the same teacher

``--pool DIR``: the path a CPU user takes, on the GPU: a job naming a pool of DIR's unlabelled images (its "pool" stage
embeds each image and its views once), then a second job on other classes that loads those embeddings; their seconds,
stage seconds and how the pool was embedded (bench/real_teacher.py measures the same on the CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch

from core.devices import DeviceUnavailableError, resolve_device
from core.generators.diffusers_decoders import write_decoder_folder
from core.pipeline import customize
from core.spec import CustomizeSpec
from core.students import count_flops
from core.teachers.base import Teacher

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CLASSES = ["a dog", "a cat", "a car", "a tree"]
BACKWARD_FLOPS_FACTOR = 3  # a forward and a backward pass cost about three forwards


def random_vit_b32(device: torch.device, image_size: int = 224) -> Teacher:
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None, force_image_size=image_size)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    teacher = Teacher("ViT-B-32@random", model, tokenizer, image_size=image_size, mean=OPENAI_MEAN, std=OPENAI_STD)
    return teacher.to(device)


def random_taesd(folder: Path, image_size: int) -> Path:
    """TAESD's architecture (AutoencoderTiny's defaults) with random weights, as a decoder folder decoding image_size px."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    return write_decoder_folder(AutoencoderTiny(), folder, name="taesd-random", family="taesd", image_size=image_size, card={})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images-per-class", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100, help="inversion steps")
    parser.add_argument("--cutouts", type=int, default=8)
    parser.add_argument("--distill-steps", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=224, help="the teacher's and the decoder's image side")
    parser.add_argument("--probes", type=int, default=1024, help="prior samples of the coverage probe and the unknown calibration")
    parser.add_argument("--pool", type=Path, default=None, help="a folder of unlabelled images: also run two pool jobs on it")
    parser.add_argument("--pool-distill-steps", type=int, default=4000, help="distillation steps of each pool job")
    parser.add_argument("--pool-images-per-class", type=int, default=256, help="surrogate images per class of each pool job")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except DeviceUnavailableError as exc:
        print(f"error [device_unavailable]: {exc}", file=sys.stderr)
        return 2
    teacher = random_vit_b32(device, args.image_size)
    scratch = tempfile.TemporaryDirectory(prefix="gpu-check-")
    decoder = random_taesd(Path(scratch.name) / "taesd-random", args.image_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synthesis = {"images_per_class": args.images_per_class, "steps": args.steps, "cutouts": args.cutouts, "coverage_samples": args.probes}
    synthesis.update(decoder=str(decoder), prior="standard")  # N(0, I) codes: no images to fit a prior on here
    spec = CustomizeSpec(
        teacher=teacher.name,
        classes=CLASSES,
        budget="gpu",
        synthesis=synthesis,
        distillation={"method": "meta_kd", "steps": args.distill_steps},
        student={"arch": "resnet18"},
        export={"formats": ["onnx"], "unknown": {"candidates": args.probes, "in_class_per_class": max(2, min(32, args.images_per_class))}},
        device=args.device if args.device != "auto" else "auto",
        seed=0,
    )
    began = time.monotonic()
    with scratch:
        result = customize(spec, teacher)
    total = time.monotonic() - began
    used = next(teacher.parameters()).device
    if device.type == "cuda" and (used.type != "cuda" or torch.cuda.max_memory_allocated(device) == 0):
        print(f"error [cuda_not_used]: CUDA was asked for, but the teacher ran on {used}", file=sys.stderr)
        return 2
    stages = result.metrics["stage_seconds"]
    images = args.images_per_class * len(CLASSES)
    image_steps = images * args.steps
    teacher_flops = count_flops(teacher.model.visual, teacher.image_size)
    achieved = image_steps * args.cutouts * teacher_flops * BACKWARD_FLOPS_FACTOR / max(stages["synthesizing"], 1e-9)
    report = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "teacher": teacher.name,
        "decoder": "TAESD (random weights)",
        "image_size": teacher.image_size,
        "stage_seconds": stages,
        "total_seconds": round(total, 1),
        "synthesis_images_x_steps_per_second": round(image_steps / max(stages["synthesizing"], 1e-9), 1),
        "teacher_forward_gflops_per_image": round(teacher_flops / 1e9, 2),
        "achieved_teacher_tflops": round(achieved / 1e12, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "bf16_autocast": device.type == "cuda",
    }
    if args.pool is not None:
        report["pool_jobs"] = pool_jobs(teacher, args.pool, args.pool_distill_steps, args.pool_images_per_class, args.probes, args.device)
    print(json.dumps(report, indent=2))
    return 0


POOL_CLASSES = (["t-shirt/top", "trouser", "sneaker", "bag"], ["pullover", "dress", "sandal", "ankle boot"])


def pool_jobs(teacher: Teacher, folder: Path, distill_steps: int, per_class: int, probes: int, device: str) -> list[dict[str, object]]:
    """Two jobs on a pool of ``folder``'s images with the cpu budget's method (the pool generator, cached views): the
    first embeds the pool, the second (other classes) loads its embeddings."""
    from core.pipeline import pool_source, resolved_spec, working_size
    from core.pools import PoolSource
    from core.stored import ObjectStore

    stored: dict[str, bytes] = {}
    store = ObjectStore(stored.get, stored.__setitem__, stored.__contains__)
    reports = []
    for classes in POOL_CLASSES:
        spec = CustomizeSpec(
            teacher=teacher.name, classes=classes, budget="cpu", device=device, seed=0,
            synthesis={"pool": "pool_" + "0" * 26, "images_per_class": per_class, "coverage_samples": max(64, probes)},
            distillation={"steps": distill_steps},
            export={"formats": ["onnx"], "unknown": {"candidates": probes, "in_class_per_class": max(2, min(32, per_class))}},
        )  # fmt: skip
        resolved = resolved_spec(spec, teacher)
        began = time.monotonic()
        source = pool_source(resolved, teacher, PoolSource.from_folder(folder, working_size(resolved, teacher)))
        result = customize(resolved, teacher, pool=source, pool_store=store)
        metrics = result.metrics
        reports.append({"classes": classes, "seconds": round(time.monotonic() - began, 1), "stage_seconds": metrics["stage_seconds"],
                        "pool_embeddings": metrics["pool_embeddings"], "held_out_agreement": metrics["pool"]["agreement"]})  # fmt: skip
    return reports


if __name__ == "__main__":
    sys.exit(main())
