"""The `clipforge teachers` commands, run as a user runs them: the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

CLIPFORGE = shutil.which("clipforge") or str(Path(sys.executable).parent / "clipforge")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLIPFORGE, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def test_eval_json_reports_accuracy():
    result = run("teachers", "eval", "--teacher", "shapes-mini", "--task", "shape8", "--images", "800", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["teacher"] == "shapes-mini" and payload["task"] == "shape8"
    assert payload["accuracy"] >= 0.85


def test_eval_text_output_lists_classes():
    result = run("teachers", "eval", "--task", "color8", "--images", "400")
    assert result.returncode == 0, result.stderr
    assert "zero-shot accuracy" in result.stdout and "red shape" in result.stdout


def test_list_shows_the_bundled_teacher(tmp_path):
    result = run("teachers", "list", "--json", "--cache-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    names = {t["name"]: t for t in json.loads(result.stdout)}
    assert names["shapes-mini"]["source"] == "bundled" and names["shapes-mini"]["available"]


def test_offline_pull_and_eval_fail_fast_with_a_code(tmp_path):
    for args in (("teachers", "pull", "ViT-B-32/openai"), ("teachers", "eval", "--teacher", "ViT-B-32/openai")):
        start = time.monotonic()
        result = run(*args, "--cache-dir", str(tmp_path), env={"HF_HUB_OFFLINE": "1"})
        assert time.monotonic() - start < 30  # includes interpreter and torch start-up
        assert result.returncode == 2
        assert "error [teacher_unavailable]" in result.stderr and "clipforge teachers pull ViT-B-32/openai" in result.stderr
        assert "Traceback" not in result.stderr


def test_unknown_task_is_a_clear_error():
    result = run("teachers", "eval", "--task", "nope")
    assert result.returncode == 2
    assert "error [unknown_task]" in result.stderr and "shape8" in result.stderr
