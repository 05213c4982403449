"""A large pool through the service, and the memory it costs a job.

    python -m bench.large_pool --images 50000 --out bench/results/large-pool.json

Fashion-MNIST train photos (bench.export_images; never val or test) zipped and uploaded as one pool over HTTP to
`clipforge serve` (POST /v1/pools), then a `fashion-mini` job on 4 classes naming the pool (its "pool" stage embeds
every photo and its views once) and a second job on 4 other classes (it loads those embeddings). Printed: the upload's
seconds, each job's seconds and stage seconds, and the memory peak (VmHWM) of the service's worker process, which runs
the jobs, beside the size a teacher-size float copy of the pool would have been.

``--vit-slice N``: also the memory of a job's pool stage for the same pool at open_clip ViT-B-32's 224 px (random
weights), stopped after N images: the stage allocates its whole pool's tensors before its first image (the pixels at the
student's size, the fp16 embeddings), so its peak is the whole pool's; embedding all 50,000 photos at 224 px would take
hours on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import tempfile
import time
import zipfile
from pathlib import Path

FIRST = ["t-shirt/top", "trouser", "sneaker", "bag"]
SECOND = ["pullover", "dress", "sandal", "ankle boot"]


def export_pool(folder: Path, images: int) -> list[Path]:
    from bench.export_images import export_fashion

    if not folder.is_dir() or len(list(folder.glob("*.png"))) != images:
        folder.mkdir(parents=True, exist_ok=True)
        export_fashion(folder, set(), images=images)
    return sorted(folder.glob("*.png"))


def zipped(files: list[Path]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in files:
            archive.write(path, path.name)
    return buffer.getvalue()


def high_water_mb(pid: int) -> float:
    """A process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def worker_pid(serve_pid: int) -> int:
    import psutil

    children = psutil.Process(serve_pid).children(recursive=True)
    workers = [c for c in children if "worker" in " ".join(c.cmdline())]
    return (workers or children)[0].pid


def run_service(files: list[Path]) -> dict[str, object]:
    import psutil

    from client.demo import serving

    with tempfile.TemporaryDirectory(prefix="clipforge-large-pool-") as root, serving(Path(root)) as client:
        archive = zipped(files)
        began = time.monotonic()
        pool = client.create_pool(archive=archive, name=f"fashion {len(files)}")
        upload = time.monotonic() - began
        serve = [
            p
            for p in psutil.process_iter(["cmdline"])
            if "serve" in " ".join(p.info["cmdline"] or []) and str(root) in " ".join(p.info["cmdline"] or [])
        ]
        jobs = []
        for classes in (FIRST, SECOND):
            began = time.monotonic()
            job = client.submit({"teacher": "fashion-mini", "classes": classes, "seed": 0, "synthesis": {"pool": pool.id}})
            done = client.wait(job.id, timeout=3600)
            metrics = done.metrics or {}
            jobs.append(
                {
                    "classes": classes,
                    "status": done.status,
                    "seconds": round(time.monotonic() - began, 1),
                    "stage_seconds": metrics.get("stage_seconds"),
                    "pool_embeddings": metrics.get("pool_embeddings"),
                    "pool": {k: v for k, v in (metrics.get("pool") or {}).items() if k != "teacher_classes"},
                }
            )
            print(json.dumps(jobs[-1]), flush=True)
        peak = high_water_mb(worker_pid(serve[0].pid)) if serve else None
        return {"pool_id": pool.id, "images": pool.image_count, "zip_mb": round(len(archive) / 1e6, 1),
                "upload_seconds": round(upload, 1), "jobs": jobs, "worker_memory_peak_mb": peak}  # fmt: skip


class _Stop(Exception):
    pass


def vit_pool_stage_peak(folder: Path, images: int) -> dict[str, object]:
    """The memory peak of a ViT-B-32 (224 px, random weights) job's pool stage on the pool, stopped after ``images``."""
    import torch

    from bench.teacher_speed import random_teacher
    from core.pipeline import pool_views, resolved_spec, working_size
    from core.pools import PoolSource
    from core.spec import CustomizeSpec

    teacher = random_teacher("ViT-B-32")
    spec = resolved_spec(
        CustomizeSpec.model_validate({"classes": FIRST, "synthesis": {"pool": "pool_" + "0" * 26}, "budget": "cpu"}), teacher
    )
    began = time.monotonic()
    source = PoolSource.from_folder(folder, working_size(spec, teacher))
    loaded = time.monotonic() - began

    def stop_after(done: int, total: int) -> None:
        if done >= images:
            raise _Stop

    began = time.monotonic()
    with contextlib.suppress(_Stop):
        pool_views(spec, teacher, source, on_step=stop_after)
    seconds = time.monotonic() - began
    return {
        "teacher": "ViT-B-32 (random weights) at 224 px",
        "pool_images": len(source),
        "pool_pixels_mb": round(source.pixels.numel() / 1e6, 1),
        "embedded_images": images,
        "load_seconds": round(loaded, 1),
        "embed_seconds": round(seconds, 1),
        "embed_seconds_per_image": round(seconds / images, 3),
        "memory_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "teacher_size_float_copy_mb": round(len(source) * 3 * 224 * 224 * 4 / 1e6, 1),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--folder", type=Path, default=None, help="where the photos are exported (default runs/pools/fashion-N)")
    parser.add_argument("--vit-slice", type=int, default=0, help="also a ViT-B-32 pool stage's peak, stopped after N images")
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    folder = args.folder or Path(f"runs/pools/fashion-{args.images}")
    files = export_pool(folder, args.images)
    result: dict[str, object] = {"load_average_before": [round(x, 2) for x in os.getloadavg()], "images": len(files)}
    result["fashion_mini_float_copy_at_32px_mb"] = round(len(files) * 3 * 32 * 32 * 4 / 1e6, 1)
    if not args.skip_service:
        result["service"] = run_service(files)
    if args.vit_slice:
        result["vit_b32_pool_stage"] = vit_pool_stage_peak(folder, args.vit_slice)
        print(json.dumps(result["vit_b32_pool_stage"]), flush=True)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("service", "vit_b32_pool_stage")}))


if __name__ == "__main__":
    main()
