"""The exported student behind a small API: its model card, the images' preparation, top-k predictions."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

CARD_KEY = "clipforge_model_card"
BATCH = 64  # images per onnxruntime call


class StudentFileError(ValueError):
    """Not an ONNX student clipforge exported (unreadable, or without its model card)."""

    code = "invalid_model"


def prepare_image(image: Image.Image, size: int) -> np.ndarray:
    """RGB pixels in [0, 1], float32 (3, size, size): EXIF orientation applied, the shorter side resized to ``size``
    (bicubic), then centre-cropped. What a job did to its example images and what its student expects."""
    image = ImageOps.exif_transpose(image).convert("RGB")
    image = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
    return np.ascontiguousarray((np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1))


def top_log_odds(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Each row's top class log-odds at ``temperature``, log(p / (1 - p)) of its softmax top probability, computed from
    the logit gaps so that it never saturates (a confident student's p is 1.0 in float32): the "unknown" score."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.argmax(axis=1)
    gaps = z - z[np.arange(len(z)), top][:, None]
    gaps[np.arange(len(z)), top] = -np.inf
    largest = gaps.max(axis=1, keepdims=True)
    return -(largest[:, 0] + np.log(np.exp(gaps - largest).sum(axis=1)))


UNKNOWN = "unknown"  # the verdict's name where a text line says it (`clipforge predict`); never a label


@dataclass(frozen=True)
class Prediction:
    source: str  # the file's path, or the image's index in the call
    top: list[tuple[str, float]]  # (class, probability), most likely first
    # A flag beside the answer, never instead of it: the score is below the model card's threshold, so the image may be
    # none of the classes. None when not asked or the job made no calibration.
    unknown: bool | None = None
    unknown_score: float | None = None  # the top class's log-odds at the calibrated temperature (top_log_odds)
    unknown_threshold: float | None = None  # the card's threshold the score is compared with

    @property
    def label(self) -> str:
        """The most likely class, always (a trusted answer below the threshold is still the answer; ``unknown`` flags it)."""
        return self.top[0][0]

    def to_json(self) -> dict[str, object]:
        return {"source": self.source, "label": self.label, "unknown": self.unknown, "unknown_score": self.unknown_score,
                "unknown_threshold": self.unknown_threshold,
                "top": [{"class": c, "probability": round(p, 6)} for c, p in self.top]}  # fmt: skip


class Student:
    """An ONNX student and its model card; ``threads``: onnxruntime's intra-op threads (None: its default)."""

    def __init__(self, onnx_bytes: bytes, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a file that is not a model
            raise StudentFileError(f"not an ONNX model onnxruntime can load: {exc}") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        if CARD_KEY not in metadata:
            raise StudentFileError(f"the ONNX file has no {CARD_KEY!r} metadata: not a clipforge student")
        self.card: dict = json.loads(metadata[CARD_KEY])
        self.classes: list[str] = list(self.card["classes"])
        self.image_size = int(self.card["input"]["shape"][2])
        self.input_name = self.session.get_inputs()[0].name
        calibration = self.card.get("unknown") or {}
        # The "unknown" answer's calibration (core.calibration): None when the job made none.
        self.unknown_threshold: float | None = float(calibration["threshold"]) if calibration.get("available") else None
        self.temperature = float(calibration.get("temperature", 1.0)) if calibration.get("available") else 1.0

    @classmethod
    def load(cls, path: str | Path, *, threads: int | None = None) -> Student:
        return cls(Path(path).read_bytes(), threads=threads)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """(N, K) logits of pixels (N, 3, S, S) in [0, 1], in batches."""
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        parts = [self.session.run(None, {self.input_name: pixels[i : i + BATCH]})[0] for i in range(0, len(pixels), BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes)), dtype=np.float32)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        return softmax(self.logits(pixels))

    def prepare(self, images: Iterable[Image.Image | str | Path]) -> np.ndarray:
        """Images (PIL images or paths) as the student's input batch."""
        arrays = []
        for image in images:
            if isinstance(image, Image.Image):
                arrays.append(prepare_image(image, self.image_size))
            else:
                with Image.open(image) as opened:
                    arrays.append(prepare_image(opened, self.image_size))
        return np.stack(arrays) if arrays else np.zeros((0, 3, self.image_size, self.image_size), dtype=np.float32)

    def predict(self, images: Sequence[Image.Image | str | Path], *, top_k: int = 3, unknown: bool = False) -> list[Prediction]:
        """The ``top_k`` most likely classes of each image, with their probabilities. ``unknown``: also flag each image
        that may be none of the classes (its top class log-odds at the calibrated temperature below the card's threshold),
        with its score and the threshold; a student without a calibration answers None."""
        logits = self.logits(self.prepare(images))
        probabilities = softmax(logits)
        scores = top_log_odds(logits, self.temperature) if len(logits) else np.zeros(0)
        k = max(1, min(top_k, len(self.classes)))
        predictions = []
        for i, (image, row) in enumerate(zip(images, probabilities, strict=True)):
            order = np.argsort(-row, kind="stable")[:k]
            source = str(image) if not isinstance(image, Image.Image) else str(i)
            top = [(self.classes[j], float(row[j])) for j in order]
            if unknown and self.unknown_threshold is not None:
                score = round(float(scores[i]), 4)
                predictions.append(Prediction(source, top, bool(scores[i] < self.unknown_threshold), score, self.unknown_threshold))
            else:
                predictions.append(Prediction(source, top))
        return predictions


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (an empty batch stays empty)."""
    if not len(logits):
        return logits
    scaled = logits / temperature
    shifted = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
