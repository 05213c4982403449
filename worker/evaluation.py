"""Running one evaluation: score a succeeded job's exported student (onnxruntime, the file users download) and its
teacher's zero-shot head on the labelled images the user sent; write the confusion matrices, a grid of the student's
mistakes and the full result; store them and finish the evaluation in one transaction.

As with jobs, the message carries the evaluation id only, the worker claims it with a lease, and its files become
visible only with the row that finishes it; a failed attempt leaves none.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from sqlalchemy.orm import Session, sessionmaker

from core.artifacts import CONFUSION_FILE, EVALUATION_FILE, MISTAKES_FILE, ONNX_FILE
from core.images import to_pixels
from core.pipeline import class_prompts
from core.scoring import Scores, onnx_input_size, score, student_predictions, teacher_predictions
from core.spec import CustomizeSpec
from service import evaluations as repo
from service import jobs
from service.db import session_scope
from service.settings import Settings
from service.storage import Storage
from worker.attempts import LeaseKeeper, LeaseLost, new_owner, settle
from worker.teachers import get_teacher

log = logging.getLogger("clipforge.worker")

MAX_MISTAKES = 64  # images in mistakes.png
MISTAKE_TILE = 96  # pixels per image in mistakes.png
MISTAKE_CAPTION = 28  # pixels under each image for "true → predicted"
MISTAKES_PER_ROW = 8
CONTENT_TYPES = {CONFUSION_FILE: "image/png", MISTAKES_FILE: "image/png", EVALUATION_FILE: "application/json"}


@dataclass(frozen=True)
class Inputs:
    spec: CustomizeSpec
    onnx_key: str
    job_uploads: list[tuple[str, str]]  # (class name, storage key) of the job's example images
    images: list[tuple[str, str, str, str | None]]  # (image id, class name, storage key, file name)


class EvaluationRunner:
    def __init__(self, settings: Settings, factory: sessionmaker[Session], storage: Storage) -> None:
        self.settings, self.factory, self.storage = settings, factory, storage

    def run(self, evaluation_id: str) -> str:
        owner = new_owner()
        with session_scope(self.factory) as session:
            evaluation = repo.claim(session, evaluation_id, owner, self.settings.lease_seconds, self.settings.max_attempts)
            if evaluation is None:
                log.info("evaluation %s is not ours to run (finished, deleted or leased elsewhere)", evaluation_id)
                return "skipped"
            job_id = evaluation.job_id
            job = jobs.get_job(session, job_id)
            onnx = jobs.get_artifact(session, job_id, ONNX_FILE)
            inputs = Inputs(
                CustomizeSpec.model_validate(job.spec),
                onnx.storage_key,
                [(u.class_name, u.storage_key) for u in jobs.list_uploads(session, job_id)],
                [(i.id, i.class_name, i.storage_key, i.filename) for i in repo.images(session, evaluation_id)],
            )
        seconds = self.settings.lease_seconds
        keeper = LeaseKeeper(
            self.factory,
            evaluation_id,
            self.settings.beat_seconds,
            lambda session: repo.renew_lease(session, evaluation_id, owner, seconds),
        )
        prefix = repo.prefixes(job_id, evaluation_id)[1]

        def attempt() -> str:
            result, files = self._evaluate(inputs)
            keeper.check()
            stored = [(name, CONTENT_TYPES[name], self.storage.put(repo.artifact_key(job_id, evaluation_id, name), data))
                      for name, data in sorted(files.items())]  # fmt: skip
            with session_scope(self.factory) as session:
                if not repo.finish(session, evaluation_id, owner, repo.SUCCEEDED, result=result, artifacts=stored):
                    raise LeaseLost(evaluation_id)
            log.info("evaluation %s succeeded: student %.4f, teacher %.4f", evaluation_id, result["student"]["accuracy"],
                     result["teacher"]["accuracy"])  # fmt: skip
            return repo.SUCCEEDED

        def failed(code: str, message: str) -> str:
            self.storage.delete_prefix(prefix)
            with session_scope(self.factory) as session:
                repo.finish(session, evaluation_id, owner, repo.FAILED, code=code, message=message)
            return repo.FAILED

        keeper.start()
        try:
            return settle(f"evaluation {evaluation_id}", attempt, lost=lambda: "lost", failed=failed)
        finally:
            keeper.stop()

    def _pixels(self, keys: list[str], size: int) -> torch.Tensor:
        images = []
        for key in keys:
            with Image.open(io.BytesIO(self.storage.read(key))) as image:
                images.append(to_pixels(image, size))
        return torch.stack(images)

    def _evaluate(self, inputs: Inputs) -> tuple[dict[str, Any], dict[str, bytes]]:
        spec = inputs.spec
        names = spec.class_names
        index = {name: k for k, name in enumerate(names)}
        teacher = get_teacher(spec.teacher or self.settings.default_teacher, self.settings.device, self.settings.cache_dir)
        onnx_bytes = self.storage.read(inputs.onnx_key)
        keys = [key for _, _, key, _ in inputs.images]
        labels = np.array([index[class_name] for _, class_name, _, _ in inputs.images], dtype=np.int64)
        student_size = onnx_input_size(onnx_bytes)
        student_pixels = self._pixels(keys, student_size)
        teacher_pixels = student_pixels if teacher.image_size == student_size else self._pixels(keys, teacher.image_size)
        examples: dict[str, list[str]] = {}
        for class_name, key in inputs.job_uploads:
            examples.setdefault(class_name, []).append(key)
        example_pixels = {name: self._pixels(keys_, teacher.image_size) for name, keys_ in examples.items()}
        student = score(student_predictions(onnx_bytes, student_pixels.numpy()), labels, len(names))
        teacher_scores = score(teacher_predictions(teacher, class_prompts(spec, example_pixels), teacher_pixels), labels, len(names))
        mistakes = np.flatnonzero(student.predictions != labels)
        result = {
            "images": len(labels),
            "classes": names,
            "student": _scores_out(student, names),
            "teacher": _scores_out(teacher_scores, names),
            "agreement": round(float((student.predictions == teacher_scores.predictions).mean()), 4),
            "student_mistakes": len(mistakes),
        }
        pairs = zip(inputs.images, student.predictions, teacher_scores.predictions, strict=True)
        per_image = [
            {"image": image_id, "filename": filename, "class": class_name, "student": names[s], "teacher": names[t]}
            for (image_id, class_name, _, filename), s, t in pairs
        ]
        files = {
            CONFUSION_FILE: confusion_png(student, teacher_scores, names),
            MISTAKES_FILE: mistakes_png(student_pixels, labels, student.predictions, mistakes[:MAX_MISTAKES], names),
            EVALUATION_FILE: json.dumps({**result, "per_image": per_image}, indent=2).encode(),
        }
        return result, files


def _scores_out(scores: Scores, names: list[str]) -> dict[str, Any]:
    return {
        "accuracy": round(scores.accuracy, 4),
        "per_class": {name: None if acc is None else round(acc, 4) for name, acc in zip(names, scores.per_class, strict=True)},
        "confusion": scores.confusion.tolist(),
    }


def confusion_png(student: Scores, teacher: Scores, names: list[str]) -> bytes:
    """The student's and the teacher's confusion matrices side by side, rows normalised, counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a worker
    from matplotlib.figure import Figure

    k = len(names)
    side = min(4.0 + 0.45 * k, 24.0)
    figure = Figure(figsize=(2 * side + 1.5, side), dpi=100)
    axes = figure.subplots(1, 2)
    for ax, scores, title in ((axes[0], student, "student (ONNX)"), (axes[1], teacher, "teacher (zero-shot)")):
        counts = scores.confusion
        rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_title(f"{title}: accuracy {scores.accuracy:.3f}")
        ax.set_xticks(range(k), labels=names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), labels=names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if k <= 30:  # beyond that the numbers would not fit the cells
            for row in range(k):
                for col in range(k):
                    if counts[row, col]:
                        ax.text(col, row, str(counts[row, col]), ha="center", va="center", fontsize=7,
                                color="white" if rates[row, col] > 0.5 else "black")  # fmt: skip
        figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def mistakes_png(pixels: torch.Tensor, labels: np.ndarray, predictions: np.ndarray, picked: np.ndarray, names: list[str]) -> bytes:
    """Up to MAX_MISTAKES images the student got wrong, each captioned "true -> predicted"; a note when there are none."""
    columns = MISTAKES_PER_ROW
    rows = max(1, -(-len(picked) // columns))
    canvas = Image.new("RGB", (columns * MISTAKE_TILE, rows * (MISTAKE_TILE + MISTAKE_CAPTION)), "white")
    draw = ImageDraw.Draw(canvas)
    if len(picked) == 0:
        draw.text((8, 8), "The student got every image right.", fill="black")
    for slot, i in enumerate(picked):
        array = (pixels[i].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        tile = Image.fromarray(array).resize((MISTAKE_TILE, MISTAKE_TILE), Image.Resampling.NEAREST)
        x, y = (slot % columns) * MISTAKE_TILE, (slot // columns) * (MISTAKE_TILE + MISTAKE_CAPTION)
        canvas.paste(tile, (x, y))
        caption = f"{names[labels[i]][:12]} -> {names[predictions[i]][:12]}"  # ASCII: PIL's default font has no arrow
        draw.text((x + 2, y + MISTAKE_TILE + 2), caption, fill="black")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
