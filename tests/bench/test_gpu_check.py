"""The GPU check script refuses clearly when the CUDA device it is asked for does not exist (any machine: cuda:99)."""

from __future__ import annotations

import subprocess
import sys

from tests.servers import REPO


def test_the_gpu_check_fails_clearly_without_the_cuda_device_it_was_asked_for():
    command = [sys.executable, "-m", "bench.gpu_check", "--device", "cuda:99"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "error [device_unavailable]" in done.stderr and "Traceback" not in done.stderr
