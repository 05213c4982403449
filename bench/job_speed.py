"""The job's own speed, for `clipforge bench speed --jobs`: a sample bank's build, a default job on it, a second job on
other classes of the same teacher on it, and that second job without a bank, all in one process (the ratios hold on a
busy machine); and what a distillation step costs under each lever (threads, channels-last, torch.compile, batch size).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from core.bank import storage_bank_store
from core.pipeline import BankRequest, customize
from core.spec import CustomizeSpec
from core.students import create_student_for
from core.teachers import create_teacher
from core.teachers.base import Teacher
from service.storage import LocalStorage

SHAPE8 = ["circle", "square", "triangle", "star", "hexagon", "cross", "heart", "ring"]
OTHER_CLASSES = ["circle", "star", "heart", "ring"]  # the second job: another task on the same teacher
LEVER_STEPS = 40  # timed distillation steps per lever (after 5 warm-up steps)


def _job(spec: dict, teacher: Teacher, bank: BankRequest | None, out: Path | None) -> dict[str, object]:
    began = time.monotonic()
    result = customize(CustomizeSpec.model_validate(spec), teacher, bank=bank)
    seconds = time.monotonic() - began
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name, data in result.artifacts.items():
            (out / name).write_bytes(data)
    return {"seconds": round(seconds, 1), "stage_seconds": result.metrics["stage_seconds"], "bank": result.metrics["bank"]}


def measure_jobs(teacher_name: str, seed: int, out: Path | None) -> dict[str, object]:
    """Four jobs on a fresh bank store: the default shape8 job (building the bank), the same job again (on the built bank),
    a second job on other classes on the bank, and that job without a bank. ``out``: the first job's artifacts go there."""
    teacher = create_teacher(teacher_name, device="cpu")
    base = {"teacher": teacher_name, "seed": seed}
    with tempfile.TemporaryDirectory(prefix="clipforge-bank-") as folder:
        bank = BankRequest(storage_bank_store(LocalStorage(Path(folder))))
        first = _job({**base, "classes": SHAPE8}, teacher, bank, out)
        again = _job({**base, "classes": SHAPE8}, teacher, bank, None)
        other = _job({**base, "classes": OTHER_CLASSES}, teacher, bank, None)
    without = _job({**base, "classes": OTHER_CLASSES}, teacher, None, None)
    return {
        "threads": torch.get_num_threads(),
        "load_average": round(os.getloadavg()[0], 2),
        "first_job_building_the_bank": first,
        "the_same_job_on_the_built_bank": again,
        "a_job_on_other_classes_on_the_bank": other,
        "that_job_without_a_bank": without,
        "bank_speedup": round(float(without["seconds"]) / float(other["seconds"]), 2),  # type: ignore[arg-type]
    }


def _step_ms(teacher: Teacher, arch: str, *, threads: int, batch: int, channels_last: bool, compiled: bool) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    student = create_student_for(teacher, arch, 8, None).train()
    pixels, targets = torch.rand(batch, 3, teacher.image_size, teacher.image_size), torch.randn(batch, 8)
    if channels_last:
        student, pixels = student.to(memory_format=torch.channels_last), pixels.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    forward = torch.compile(student) if compiled else student

    def step() -> None:
        loss = torch.nn.functional.kl_div(forward(pixels).log_softmax(1), targets.softmax(1), reduction="batchmean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 5.0)
        optimizer.step()

    for _ in range(5):
        step()
    began = time.perf_counter()
    for _ in range(LEVER_STEPS):
        step()
    return 1000 * (time.perf_counter() - began) / LEVER_STEPS


def measure_levers(teacher_name: str, arch: str) -> list[dict[str, object]]:
    """ms per distillation step (student forward, backward and update on cached teacher logits) under each lever."""
    teacher = create_teacher(teacher_name, device="cpu")
    threads = os.cpu_count() or 1
    levers = [
        {"threads": 1, "batch": 64, "channels_last": False, "compiled": False},
        {"threads": threads, "batch": 64, "channels_last": False, "compiled": False},
        {"threads": threads, "batch": 64, "channels_last": True, "compiled": False},
        {"threads": threads, "batch": 128, "channels_last": True, "compiled": False},
        {"threads": threads, "batch": 64, "channels_last": False, "compiled": True},
    ]
    rows = []
    for lever in levers:
        try:
            ms: float | None = round(_step_ms(teacher, arch, **lever), 2)  # type: ignore[arg-type]
            note = None
        except Exception as exc:  # torch.compile needs a C++ compiler: a machine without one says so
            ms, note = None, f"{type(exc).__name__}: {str(exc)[:120]}"
        rows.append({**lever, "ms_per_step": ms, "ms_per_image": None if ms is None else round(ms / lever["batch"], 3), "note": note})
    return rows


def jobs_markdown(jobs: dict, levers: list[dict]) -> list[str]:
    def stages(job: dict) -> str:
        return ", ".join(f"{k} {v:.1f}" for k, v in job["stage_seconds"].items())

    rows = [
        ("the default job, building the teacher's bank", jobs["first_job_building_the_bank"]),
        ("the same job on the built bank", jobs["the_same_job_on_the_built_bank"]),
        (f"a job on other classes ({', '.join(OTHER_CLASSES)}) on the bank", jobs["a_job_on_other_classes_on_the_bank"]),
        ("that job without a bank", jobs["that_job_without_a_bank"]),
    ]
    lines = [
        "",
        "## A job's own time",
        "",
        f"`customize` in one process, {jobs['threads']} torch threads (1-minute load average {jobs['load_average']} at the start),",
        "a fresh bank store (core.bank: 16,384 prior samples, 4 views each):",
        "",
        "| job | seconds | bank | stages (s) |",
        "|---|---:|---|---|",
    ]
    for label, job in rows:
        bank = job["bank"]
        status = bank.get("status", "none") if bank.get("used") else "none"
        lines.append(f"| {label} | {job['seconds']:.1f} | {status} | {stages(job)} |")
    lines += [
        "",
        f"On the bank the second job takes **{jobs['bank_speedup']}x** less time than without one.",
        "",
        "## A distillation step under each lever",
        "",
        "The student's forward, backward and update on 64 or 128 images with cached teacher logits (a step on a bank):",
        "",
        "| threads | batch | channels-last | torch.compile | ms / step | ms / image |",
        "|---:|---:|---|---|---:|---:|",
    ]
    for lever in levers:
        ms = "failed: " + str(lever["note"]) if lever["ms_per_step"] is None else f"{lever['ms_per_step']:.2f}"
        per_image = "" if lever["ms_per_image"] is None else f"{lever['ms_per_image']:.3f}"
        lines.append(
            f"| {lever['threads']} | {lever['batch']} | {'yes' if lever['channels_last'] else 'no'} | "
            f"{'yes' if lever['compiled'] else 'no'} | {ms} | {per_image} |"
        )
    return lines
