"""`python -m bench.load --short`, as CI runs it: the embedded service started, loaded for a few seconds while its
worker runs a job, and stopped. Only that it ran and that no request failed is checked; no throughput thresholds."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.servers import REPO


def test_short_load_run_completes_without_failed_requests(tmp_path):
    figures = tmp_path / "load.json"
    run = subprocess.run([sys.executable, "-m", "bench.load", "--short", "--seconds", "2", "--json", str(figures)],
                         cwd=REPO, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    rows = json.loads(figures.read_text())
    assert [(r["setup"], r["endpoint"]) for r in rows] == [("embedded", "GET /v1/jobs/{id}"), ("embedded", "POST /v1/jobs")]
    assert all(r["requests"] > 0 and r["failed"] == 0 for r in rows), rows
    assert "| embedded | `GET /v1/jobs/{id}` |" in run.stdout
