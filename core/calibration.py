"""The student's "none of these": a confidence threshold below which it answers "unknown", calibrated without real data.

A student always answers one of its classes. At export the job calibrates it on images it can make itself:

- in-class images: held-out synthesized images of the job's classes (another seed than the training set's); the
  student's temperature (``T``) is fitted on them (temperature scaling: the NLL of their labels);
- out-of-class images: prior samples the teacher gives to a class outside the job, among the teacher's vocabulary
  (``Teacher.vocabulary``: the object names it knows) with a clear margin, and the samples it finds most like each of
  those names.

The score is the student's top class log-odds at the temperature (``clipforge_runtime.top_log_odds``: the top softmax
probability's log(p / (1 - p)), which does not saturate as float32 probabilities do); the threshold is the score that
accepts ``false_accept_rate`` of the out-of-class images;
the model card stores it with what it costs in class (the share of in-class synthesized images it refuses). The runtime
and the predictions answer "unknown" below it (clipforge_runtime).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from clipforge_runtime.student import softmax, top_log_odds
from core.spec import UnknownSpec, normalise_text
from core.synthesis import InversionTargets, SynthesisConfig, prior_sampler, synthesize
from core.teachers.base import DEFAULT_TEMPLATE, Teacher

# The spec's export.unknown (core.spec.UnknownSpec) sets the share of out-of-class images the threshold lets through,
# the held-out synthesized images per class, and how many prior samples are sorted; by default:
CANDIDATES = 4096  # prior samples the teacher sorts into the job's classes and the vocabulary's, from a bank
CANDIDATES_WITHOUT_BANK = 1024  # the same decoded and embedded at export when the job has no bank
OUT_OF_CLASS_MARGIN = 0.5  # the teacher's probability of the out-of-class name, over job and vocabulary, at least this
MAX_OUT_OF_CLASS = 1024
# Never below 1: synthesized images are easier than real ones, and sharpening on them (measured: T at the grid's floor
# of 0.25 on the default job) makes every real image look certain.
TEMPERATURES = np.exp(np.linspace(math.log(1.0), math.log(8.0), 31))
CALIBRATION_SEED_OFFSET = 104_729  # another seed than the training set's and the quality estimate's


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the NLL of ``labels`` (a grid over 1..8, log-spaced)."""
    losses = [-np.log(softmax(logits, t)[np.arange(len(labels)), labels] + 1e-12).mean() for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(losses))])


@torch.no_grad()
def _student_logits(student: nn.Module, pixels: torch.Tensor) -> np.ndarray:
    size = int(getattr(student, "image_size", pixels.shape[-1]))
    parts = []
    for chunk in pixels.split(256):
        chunk = chunk.float().cpu()
        if chunk.shape[-1] != size:
            chunk = nn.functional.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        parts.append(student(chunk).float().numpy())
    return np.concatenate(parts)


@torch.no_grad()
def out_of_class_images(
    teacher: Teacher,
    targets: InversionTargets,
    class_texts: list[str],
    synthesis: SynthesisConfig,
    seed: int,
    bank=None,
    candidates: int | None = None,
) -> tuple[torch.Tensor, int]:
    """Prior samples the teacher gives, with a margin, to a name of its vocabulary that is none of the job's classes;
    and how many vocabulary names were outside the job."""
    taken = {normalise_text(t).casefold() for t in class_texts}
    outside = [word for word in teacher.vocabulary if normalise_text(word).casefold() not in taken]
    if not outside:
        return torch.zeros(0, 3, teacher.image_size, teacher.image_size), 0
    words = teacher.encode_text([DEFAULT_TEMPLATE.format(word) for word in outside])
    heads = torch.cat([targets.classifier, words.to(targets.classifier.device)])
    if bank is not None:
        count = min(candidates or CANDIDATES, len(bank))
        index = torch.randperm(len(bank), generator=torch.Generator().manual_seed(seed + CALIBRATION_SEED_OFFSET))[:count]
        pixels = bank.pixels(index)
        embeddings = bank.embeddings[index, 0].to(heads.device, heads.dtype)
    else:
        rng = torch.Generator().manual_seed(seed + CALIBRATION_SEED_OFFSET)
        count = candidates or CANDIDATES_WITHOUT_BANK
        pixels = prior_sampler(synthesis, teacher.image_size, teacher.device)(count, rng).float().cpu()
        embeddings = torch.cat([teacher.encode_image(chunk.to(teacher.device)) for chunk in pixels.split(256)])
    probabilities = (teacher.logit_scale * embeddings @ heads.T).float().softmax(-1).cpu()
    job = targets.num_classes
    best, which = probabilities.max(1)
    chosen = ((which >= job) & (best >= OUT_OF_CLASS_MARGIN)).nonzero(as_tuple=True)[0]
    order = best[chosen].argsort(descending=True)[:MAX_OUT_OF_CLASS]
    return pixels[chosen[order]], len(outside)


def calibrate_unknown(
    student: nn.Module,
    teacher: Teacher,
    targets: InversionTargets,
    class_texts: list[str],
    synthesis: SynthesisConfig,
    *,
    seed: int,
    bank=None,
    settings: UnknownSpec | None = None,
) -> dict[str, object]:
    """The model card's ``unknown`` entry: the temperature, the threshold and what they measured, or why there is none."""
    settings = settings or UnknownSpec()
    if not settings.enabled:
        return {"available": False, "reason": "not asked for (export.unknown.enabled is false)"}
    false_accept_rate = settings.false_accept_rate
    out_of_class, names = out_of_class_images(teacher, targets, class_texts, synthesis, seed, bank, settings.candidates)
    if names == 0:
        return {"available": False, "reason": "the teacher's vocabulary names no object outside the job's classes"}
    if len(out_of_class) < 20:
        return {"available": False, "reason": f"the teacher gave only {len(out_of_class)} prior samples to names outside the job"}
    config = replace(synthesis, images_per_class=settings.in_class_per_class)
    in_class = synthesize(teacher, targets, config, seed=seed + CALIBRATION_SEED_OFFSET, bank=bank)
    in_logits, out_logits = _student_logits(student, in_class.images), _student_logits(student, out_of_class)
    labels = in_class.labels.numpy()
    temperature = fit_temperature(in_logits, labels)
    in_scores, out_scores = top_log_odds(in_logits, temperature), top_log_odds(out_logits, temperature)
    threshold = float(np.quantile(out_scores, 1.0 - false_accept_rate))
    return {
        "available": True,
        "temperature": round(temperature, 4),
        "score": "top class log-odds at the temperature",
        "threshold": round(threshold, 6),
        "threshold_probability": round(float(1.0 / (1.0 + np.exp(-threshold))), 6),
        "false_accept_rate": false_accept_rate,
        "out_of_class_images": len(out_of_class),
        "out_of_class_names": names,
        "in_class_images": len(labels),
        "in_class_refused": round(float((in_scores < threshold).mean()), 4),
        "in_class_accuracy": round(float((in_logits.argmax(1) == labels).mean()), 4),
    }
