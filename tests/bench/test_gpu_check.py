"""The GPU check script refuses clearly when the CUDA device it is asked for does not exist (any machine: cuda:99)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.servers import REPO


def test_the_gpu_check_fails_clearly_without_the_cuda_device_it_was_asked_for():
    command = [sys.executable, "-m", "bench.gpu_check", "--device", "cuda:99"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "error [device_unavailable]" in done.stderr and "Traceback" not in done.stderr


def test_the_gpu_check_runs_its_jobs_on_the_cpu_at_a_tiny_size(tmp_path):
    """The script a lent GPU runs, end to end here: the random ViT-B-32 and TAESD, a gpu-budget job, then the pool path's
    two jobs (the second loads the pool's embeddings), its report."""
    from tests.core.test_decoder_training import write_images

    pool = write_images(tmp_path / "pool", 12)
    command = [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--image-size", "32", "--images-per-class", "2",
               "--steps", "2", "--cutouts", "2", "--distill-steps", "4", "--probes", "64", "--pool", str(pool),
               "--pool-distill-steps", "4", "--pool-images-per-class", "2"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["decoder"].startswith("TAESD") and report["image_size"] == 32 and report["achieved_teacher_tflops"] >= 0
    assert set(report["stage_seconds"]) >= {"synthesizing", "distilling", "exporting"}
    first, second = report["pool_jobs"]
    assert (first["pool_embeddings"]["status"], second["pool_embeddings"]["status"]) == ("built", "reused")
