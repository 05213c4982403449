"""`clipforge bank build`, run as a user runs it: a teacher's sample bank made ahead of its first job, left as it is when
it is already whole, and the one `clipforge customize` then reuses."""

from __future__ import annotations

import json

from tests.cli.test_teachers_cli import run
from tests.servers import QUICK_EXPORT, QUICK_PROBES


def test_bank_build_then_reuse_then_a_job_on_it(tmp_path):
    banks = tmp_path / "banks"
    built = run("bank", "build", "--teacher", "shapes-mini", "--images", "64", "--bank-dir", str(banks), "--quiet")
    assert built.returncode == 0, built.stderr
    first = json.loads(built.stdout)
    assert first["status"] == "built" and first["images"] == 64 and (first["decoder"], first["prior"]) == ("shapes-vae", "fitted")
    assert (banks / first["storage_key"]).is_file()
    again = json.loads(run("bank", "build", "--images", "64", "--bank-dir", str(banks), "--quiet").stdout)
    assert again["status"] == "reused" and again["key"] == first["key"]

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"synthesis": {"images_per_class": 4, "batch_size": 8, **QUICK_PROBES}, "distillation": {"steps": 4},
                                "student": {"arch": "tiny_cnn"}, "export": {**QUICK_EXPORT, "formats": ["onnx"]}}))  # fmt: skip
    out = tmp_path / "job"
    job = run("customize", "--config", str(spec), "--classes", "circle,star", "--bank-dir", str(banks), "--bank-images", "64",
              "--out", str(out), "--quiet")  # fmt: skip
    assert job.returncode == 0, job.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["bank"]["status"] == "reused" and metrics["bank"]["key"] == first["key"]
    assert sorted(p.name for p in (banks / "banks").iterdir()) == [first["storage_key"].split("/")[-1]]


def test_bank_build_refuses_what_no_bank_serves(tmp_path):
    zero = run("bank", "build", "--images", "0", "--bank-dir", str(tmp_path))
    assert zero.returncode == 2 and "invalid_spec" in zero.stderr
    noise = run("bank", "build", "--prior", "nonexistent-prior", "--images", "16", "--bank-dir", str(tmp_path))
    assert noise.returncode == 2 and noise.stderr.startswith("error ["), noise.stderr
