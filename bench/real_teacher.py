"""A real CLIP teacher's pool jobs on the CPU, timed beside the reference job in one run (ratios hold on a busy machine).

    python -m bench.real_teacher --teacher ViT-B-32 --pool runs/pools/fashion --out bench/results/real-teacher.json

The teacher is open_clip's architecture at its own size with random weights (pretrained ones cannot be downloaded here:
the compute is the architecture's, the accuracy meaningless). Each job runs in a fresh process (its memory peak is its
own) as `clipforge customize --pool DIR` runs it: the reference, shapes-mini's default job on 4 classes on its built
sample bank; the first pool job on 4 Fashion-MNIST classes, the pool's embeddings (and the teacher's onnxruntime towers)
included; a second job on the same pool with 4 other classes; a job on all 10 classes on it. For each: seconds, stage
seconds, the estimate made before it ran, the longest gap between progress reports, how often the ETA moved, the memory
peak, and how the pool was embedded.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path

FIRST = ["t-shirt/top", "trouser", "sneaker", "bag"]
SECOND = ["pullover", "dress", "sandal", "ankle boot"]
ALL_TEN = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
REFERENCE_CLASSES = ["circle", "star", "heart", "ring"]


def _job(kind: str, teacher_name: str, classes: list[str], folders: dict[str, str], seed: int, thin: str | None, queue) -> None:
    """One job in this (fresh) process; what it measured goes on ``queue``."""
    import torch

    from bench.teacher_speed import random_teacher
    from core.bank import storage_bank_store
    from core.pipeline import BankRequest, customize, job_estimates, pool_source, resolved_spec, working_size
    from core.pools import PoolSource
    from core.spec import CustomizeSpec
    from core.teachers import create_teacher
    from service.storage import LocalStorage

    began_load = time.monotonic()
    teacher = create_teacher(teacher_name, device="cpu") if kind == "reference" else random_teacher(teacher_name)
    load_seconds = time.monotonic() - began_load
    body: dict[str, object] = {"teacher": teacher.name, "classes": classes, "seed": seed, "budget": "cpu"}
    bank = BankRequest(storage_bank_store(LocalStorage(Path(folders["store"]))))
    pool = None
    if kind == "pool":
        body["synthesis"] = {"pool": "pool_" + "0" * 26}
        if thin is not None:
            body["distillation"] = {"thin_class_method": thin}
    spec = resolved_spec(CustomizeSpec.model_validate(body), teacher)
    if kind == "pool":
        pool = PoolSource.from_folder(folders["pool"], working_size(spec, teacher))
        pool = pool_source(spec, teacher, pool)
    estimates = job_estimates(spec, teacher, pool, bank.store, bank, Path(folders["towers"]))
    reports: list[tuple[float, str, float, float | None]] = []
    revised: list[float] = []  # the job's own estimate as it ran: revised once its preparing found thin classes (meta-KD)

    def on_progress(progress) -> None:
        reports.append((time.monotonic(), progress.stage, progress.fraction, progress.eta_seconds))
        if progress.estimated_seconds is not None and (not revised or revised[-1] != progress.estimated_seconds):
            revised.append(progress.estimated_seconds)

    began = time.monotonic()
    result = customize(spec, teacher, pool=pool, bank=bank, on_progress=on_progress, tower_dir=Path(folders["towers"]))
    seconds = time.monotonic() - began
    times = [began] + [r[0] for r in reports] + [began + seconds]
    etas = [round(r[3]) for r in reports if r[3] is not None]
    queue.put(
        {
            "kind": kind,
            "teacher": teacher_name,
            "classes": classes,
            "seconds": round(seconds, 1),
            "teacher_load_seconds": round(load_seconds, 1),
            "estimate_seconds": round(sum(estimates.values()), 1) if estimates else None,
            "estimate_stage_seconds": {k: round(v, 1) for k, v in (estimates or {}).items()},
            "estimates_as_it_ran": revised,
            "stage_seconds": result.metrics["stage_seconds"],
            "longest_progress_gap_seconds": round(max(b - a for a, b in itertools.pairwise(times)), 1),
            "eta_changes": sum(1 for a, b in itertools.pairwise(etas) if a != b),
            "memory_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "pool_embeddings": result.metrics.get("pool_embeddings"),
            "pool": {k: v for k, v in (result.metrics.get("pool") or {}).items() if k != "teacher_classes"},
            "student_image_size": result.card["student"]["image_size"],
            "distillation_method": result.card["spec"]["distillation"]["method"],
            "thin_classes": [name for name, figures in result.metrics["coverage"].items() if figures["thin"]],
            "threads": torch.get_num_threads(),
        }
    )


def run(kind: str, teacher: str, classes: list[str], folders: dict[str, str], thin: str | None = None) -> dict[str, object]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_job, args=(kind, teacher, classes, folders, 0, thin, queue))
    process.start()
    measured = queue.get()
    process.join()
    print(json.dumps(measured), flush=True)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="ViT-B-32", help="an open_clip architecture (random weights, its own size)")
    parser.add_argument("--pool", type=Path, required=True, help="a folder of unlabelled images (bench.export_images)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-ten", action="store_true", help="leave out the 10-class job")
    parser.add_argument(
        "--thin-class-method",
        default=None,
        help="the pool jobs' distillation.thin_class_method: random weights find every class thin (the teacher is sure of "
        "nothing), which switches a job to meta-KD (3 student passes a step); kd stands in for a teacher that covers them",
    )
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="clipforge-real-teacher-") as root:
        folders = {name: str(Path(root) / name) for name in ("store", "towers")}
        folders["pool"] = str(args.pool)
        shapes = {**folders, "store": str(Path(root) / "shapes-store")}
        thin = args.thin_class_method
        first = run("pool", args.teacher, FIRST, folders, thin)
        run("reference", "shapes-mini", REFERENCE_CLASSES, shapes)  # builds shapes-mini's sample bank: not timed
        reference = run("reference", "shapes-mini", REFERENCE_CLASSES, shapes)
        second = run("pool", args.teacher, SECOND, folders, thin)
        ten = None if args.skip_ten else run("pool", args.teacher, ALL_TEN, folders, thin)
    base = float(reference["seconds"])  # type: ignore[arg-type]
    summary = {
        "load_average_before": [round(x, 2) for x in load],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "pool_images": len([p for p in args.pool.rglob("*") if p.is_file()]),
        "thin_class_method": args.thin_class_method,
        "reference": reference,
        "first_pool_job": first,
        "second_pool_job": second,
        "ten_class_job_on_the_pool": ten,
        "ratios_to_reference": {
            "first_pool_job": round(float(first["seconds"]) / base, 2),  # type: ignore[arg-type]
            "second_pool_job": round(float(second["seconds"]) / base, 2),  # type: ignore[arg-type]
            **({"ten_class_job_on_the_pool": round(float(ten["seconds"]) / base, 2)} if ten else {}),  # type: ignore[arg-type]
        },
    }
    print(json.dumps(summary["ratios_to_reference"]))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
