"""How long a job takes, per stage, before it runs: a cost model of the engine's work (no torch, so the API can use it).

The job's work is counted in images through each network (decoder, teacher, student) and priced with per-image costs
measured on the reference machine: 2 CPU cores, the ``shapes-mini`` teacher at 32 px, a default job there (synthesis
22 s, distillation 325 s for 4,000 steps, 354 s in all; bench/results/experiments.md, 2026-11-29). Other teachers
scale the teacher's share by their image tower's FLOPs against shapes-mini's; a GPU budget has no reference figures
here, so its estimate is None. While a job runs, the pipeline replaces these guesses with its measured rates
(``Eta`` below): the estimate only has to be right within a factor, the ETA from the first minute on.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from core.student_catalog import STUDENTS, student_entry

# "bank": loading (or the first time building) the job's sample bank (core.bank); a job without one skips it.
# "pool": loading (or the first time building) the teacher's embeddings of the job's pool images (core.pools).
STAGES = ("pool", "preparing", "bank", "synthesizing", "distilling", "exporting")

# Seconds per image on the reference machine (2 cores, 32 px), measured with bench-style timing loops (2026-11-29).
DECODER_FORWARD_S = 1.0e-3  # shapes-vae, 32 images in 31 ms
TEACHER_FORWARD_S = 0.35e-3  # shapes-mini image tower, 64 images in 22 ms
REFERENCE_TEACHER_FLOPS = 33.9e6  # shapes-mini's image tower per image: other teachers are priced by their FLOPs against it
BACKWARD_FACTOR = 3.0  # forward + backward against forward alone
# A student's forward + backward per image: its entry's train_seconds_per_image (core.student_catalog).
DISTILL_OVERHEAD = 1.18  # augmentation, the optimiser and bookkeeping: the default job's 325 s against its 276 s of model time
META_FACTOR = 3.0  # meta-KD: an inner step and two forward-backward passes per update
CHANNELS_LAST_FACTOR = 0.84  # a channels-last step against the catalogue's (measured) default-layout one: 17.1 / 20.3 ms
# Targets, loading a built sample bank, quality estimates and export at the default's size.
FIXED_S = {"pool": 0.0, "preparing": 2.0, "bank": 1.0, "exporting": 6.0}
REFERENCE_SIZE = 32  # the student costs (core.student_catalog) are of 32 px inputs
POOL_LOAD_S = 2e-4  # a pool image's embeddings loaded and its pixels held, per image
EXPORT_PRIOR_SAMPLES = 512 + 1024  # prior samples the quality estimate and the unknown calibration embed without a bank
MEASURED_TRUST_FRACTION = 0.05  # a stage's measured rate fully replaces its estimate once this share of it has run here
CALIBRATION_MIN_S = 10.0  # only stages estimated at least this long calibrate the ETA of the later ones
# Image-tower FLOPs per image relative to shapes-mini's 33.9 MFLOPs (open_clip configs at their native resolution).
TEACHER_COST = {
    "shapes-mini": 1.0,
    "fashion-mini": 1.0,  # shapes-mini's architecture, trained on Fashion-MNIST photos
    "RN50": 121.0,
    "ViT-B-32": 130.0,
    "ViT-B-16": 520.0,
    "ViT-L-14": 2400.0,
}


def teacher_cost(teacher: str) -> float | None:
    """The teacher's per-image cost against shapes-mini, from its architecture name (``ViT-B-32/openai`` -> ViT-B-32):
    the table's, else counted from open_clip's JSON config of that architecture (``config_cost``); None for a model
    neither knows (an hf-hub repository, a timm tower)."""
    name = teacher.split("/")[0].split("@")[0].removeprefix("hf-hub:")
    counted = TEACHER_COST.get(name) or config_cost(name)  # ViT-B-16-plus-240 is its own config, not ViT-B-16's
    if counted is not None:
        return counted
    return next((cost for known, cost in TEACHER_COST.items() if name.startswith(known + "-")), None)


RN50_MACS = 4.1e9  # open_clip RN50's image tower at 224 px: layers (3, 4, 6, 3), width 64


@functools.cache
def config_cost(architecture: str) -> float | None:
    """An open_clip architecture's image-tower cost against shapes-mini, counted from its model config (read as JSON
    from the installed package, without importing it: the API prices jobs without torch). A ViT: per layer, 12 width²
    multiply-adds a token (attention projections and MLP) and 2 width a token pair; a ModifiedResNet: RN50's, scaled by
    its blocks, width² and pixels. Within 3 % of ``TEACHER_COST``'s published figures for ViT-B-32, RN50, ViT-B-16 and
    ViT-L-14."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model_configs" / f"{architecture}.json"
    try:
        vision = json.loads(path.read_text())["vision_cfg"]
    except (OSError, ValueError, KeyError):
        return None
    size, layers, width = vision.get("image_size"), vision.get("layers"), vision.get("width")
    size = size[0] if isinstance(size, list) else size
    if not isinstance(size, int) or not isinstance(width, int):
        return None
    if isinstance(layers, int) and vision.get("patch_size"):
        tokens = (size // int(vision["patch_size"])) ** 2 + 1
        macs = layers * (12 * tokens * width**2 + 2 * tokens**2 * width)
    elif isinstance(layers, list):
        macs = RN50_MACS * sum(layers) / 16 * (width / 64) ** 2 * (size / 224) ** 2
    else:
        return None
    return round(macs / REFERENCE_TEACHER_FLOPS, 1)


@dataclass(frozen=True)
class PoolFacts:
    """What the estimate needs of a job's pool: its size, and whether the teacher's embeddings of it exist already."""

    images: int  # the pool's images
    embedded: bool = False  # its embeddings for this teacher are stored (core.pools): the "pool" stage only loads them
    seconds_per_image: float | None = None  # the pool's encoder (an onnxruntime tower) timed here; None: the teacher's


@dataclass(frozen=True)
class BankFacts:
    """A sample bank the job must build first (none is stored for its teacher, decoder and prior)."""

    images: int  # prior samples to decode and embed
    views: int  # views of each, embedded too
    decoder_seconds_per_image: float | None = None  # the decoder's pass as timed on this machine; None: shapes-vae's


def estimate_stage_seconds(
    spec: Mapping[str, object],
    *,
    pool: PoolFacts | None = None,
    teacher_seconds_per_image: float | None = None,
    bank: BankFacts | None = None,
    student_seconds_per_image: float | None = None,
) -> dict[str, float] | None:
    """Seconds per stage for a resolved spec (``core.spec.resolve(...).model_dump()``) on the reference CPU; None when
    there is no reference for it (a GPU budget, a teacher of unknown cost, a student without a measured cost).
    ``teacher_seconds_per_image``: the teacher's image pass as measured on this worker (``measure_teacher_seconds``),
    else priced from its architecture's FLOPs against shapes-mini's. ``pool``: the job's pool (a job naming one).
    ``bank``: the sample bank the job builds in its "bank" stage, if none is stored yet. ``student_seconds_per_image``: a
    training step of the student at the job's size as timed on this worker, per image (else its catalogue entry's cost)."""
    if spec.get("budget") != "cpu":
        return None
    teacher = teacher_cost(str(spec.get("teacher", "")))
    synthesis, distillation, student = (dict(spec.get(k) or {}) for k in ("synthesis", "distillation", "student"))
    arch = str(student.get("arch"))
    student_cost = student_entry(arch).train_seconds_per_image if arch in STUDENTS else None
    if (teacher is None and teacher_seconds_per_image is None) or student_cost is None:
        return None
    student_cost *= (int(student.get("image_size") or REFERENCE_SIZE) / REFERENCE_SIZE) ** 2  # a step costs the pixels
    if student_seconds_per_image is not None:
        student_cost = student_seconds_per_image
    classes = len(spec.get("classes") or [])  # type: ignore[arg-type]
    images = classes * int(synthesis.get("images_per_class") or 0)
    decoder = synthesis.get("generator") in ("auto", "decoder")
    decode = (bank.decoder_seconds_per_image if bank and bank.decoder_seconds_per_image else DECODER_FORWARD_S) if decoder else 0.0
    look = teacher_seconds_per_image if teacher_seconds_per_image is not None else TEACHER_FORWARD_S * (teacher or 1.0)
    candidates = int(synthesis.get("init_candidates") or 1)
    steps = int(synthesis.get("steps") or 0)
    cutouts = int(synthesis.get("cutouts") or 1)
    pooled = synthesis.get("pool") is not None and pool is not None
    # A decoder job's prior samples come from the teacher's sample bank (core.bank) once it exists, a pool job's from
    # the pool's embeddings (core.pools): choosing among them and the fresh samples cost nothing but the student's steps;
    # with fixed views (the cpu budget) distillation runs the teacher once per surrogate image's view, not per step, and
    # not at all on a bank's or a pool's images (their views are cached).
    from_pool = pooled and synthesis.get("generator") == "pool"
    banked = (decoder or from_pool) and int(distillation.get("fixed_views") or 0) > 0
    choose = 0.0 if banked and not steps else images * candidates * (decode + look)
    synthesizing = choose + images * steps * BACKWARD_FACTOR * (decode + cutouts * look)
    batch = int(distillation.get("batch_size") or 64)
    updates = distillation.get("steps")
    if updates is None:
        updates = int(distillation.get("epochs") or 1) * max(1, math.ceil(images / batch))
    fresh = float(distillation.get("fresh_share") or 0.0)
    pool_share = float(distillation.get("pool_share") or 0.0) if pooled else 0.0
    if banked:
        per_update = batch * student_cost * CHANNELS_LAST_FACTOR
        fixed = 0.0 if not steps else images * int(distillation.get("fixed_views") or 0) * look  # drawn images: cached views
    else:
        per_update, fixed = batch * ((1 - pool_share) * look + student_cost) + round(batch * fresh) * decode, 0.0
    if str(distillation.get("method", "")).startswith("meta"):
        per_update *= META_FACTOR
    distilling = fixed + int(updates) * per_update * DISTILL_OVERHEAD
    measured = {**FIXED_S, "synthesizing": synthesizing, "distilling": distilling}
    if bank is not None:
        measured["bank"] += bank.images * (decode + (1 + bank.views) * look)
    if pooled:
        assert pool is not None
        passes = 0 if pool.embedded else pool.images * (1 + int(synthesis.get("pool_views") or 1))
        measured["pool"] = passes * (pool.seconds_per_image or look) + pool.images * POOL_LOAD_S
    if not from_pool:  # the coverage is measured on fresh prior samples in preparing, before any bank is loaded
        measured["preparing"] += int(synthesis.get("coverage_samples") or 0) * (decode + look)
    if not banked:  # the quality estimate and the unknown calibration embed their own prior samples
        measured["exporting"] += (EXPORT_PRIOR_SAMPLES + images) * (decode + look)
    return {stage: measured[stage] for stage in STAGES}


def estimate_seconds(
    spec: Mapping[str, object], *, pool: PoolFacts | None = None, teacher_seconds_per_image: float | None = None
) -> float | None:
    stages = estimate_stage_seconds(spec, pool=pool, teacher_seconds_per_image=teacher_seconds_per_image)
    return None if stages is None else round(sum(stages.values()), 1)


@dataclass
class Eta:
    """Seconds left in a running job, from measured rates: the current stage's remaining share at the rate it has
    run so far, the stages after it at their estimates scaled by how the finished stages compared with theirs.

    Honest from the first minute: the overall fraction is never extrapolated (a short first stage credited at once
    made the old ``elapsed / fraction`` ETA four times too low, growing as the job went on).
    """

    estimates: dict[str, float]  # seconds per stage before the job started (estimate_stage_seconds, or equal shares)
    clock: object = time.monotonic  # injectable for tests
    finished: dict[str, tuple[float, float]] = field(default_factory=dict)  # stage: (measured, estimated) seconds
    stage: str | None = None
    stage_began: float = 0.0
    began_at: tuple[float, float] = (0.0, 0.0)  # (time, stage fraction) this attempt's part of the stage began at
    measured_share: float = 0.0  # of the last seconds_left: the share resting on measured rates (0: all estimates)

    def start_stage(self, stage: str) -> None:
        self.stage, self.stage_began = stage, self.clock()  # type: ignore[operator]
        self.began_at = (self.stage_began, 0.0)

    def resume(self, stage_fraction: float) -> None:
        """The current stage goes on from an earlier attempt's checkpoint: only what runs from here is this attempt's rate."""
        self.began_at = (self.clock(), stage_fraction)  # type: ignore[assignment]

    def end_stage(self, stage: str) -> None:
        resumed_from = self.began_at[1]
        if resumed_from >= 0.95:
            return  # an earlier attempt did this stage: its few seconds here say nothing of this machine's speed
        measured = (self.clock() - self.stage_began) / (1.0 - resumed_from)  # type: ignore[operator]
        self.finished[stage] = (measured, self.estimates.get(stage, 0.0))

    @property
    def calibration(self) -> float:
        """Measured over estimated time of the finished stages long enough to say something about this machine's
        speed (1 until one has): a stage of fixed costs (preparing: 0.1 s measured against 2 s estimated) would
        scale every later estimate by its error."""
        measured = sum(m for m, e in self.finished.values() if e >= CALIBRATION_MIN_S)
        estimated = sum(e for m, e in self.finished.values() if e >= CALIBRATION_MIN_S)
        return measured / estimated if estimated > 0 and measured > 0 else 1.0

    def seconds_left(self, stage_fraction: float) -> float:
        """The current stage's rest, from its measured rate blended in as it becomes reliable (5 % of the stage run
        here: early rates swing with a machine's load), and the later stages at their calibrated estimates."""
        assert self.stage is not None
        now = self.clock()
        began, from_fraction = self.began_at
        elapsed, progressed = now - began, stage_fraction - from_fraction  # type: ignore[operator]
        estimated = self.estimates.get(self.stage, 0.0) * self.calibration * (1.0 - stage_fraction)
        current, trust = estimated, 0.0
        if progressed >= 0.02 and elapsed >= 1.0:
            measured = elapsed / progressed * (1.0 - stage_fraction)  # this stage's own rate, in this attempt
            trust = min(1.0, progressed / MEASURED_TRUST_FRACTION)
            current = trust * measured + (1.0 - trust) * estimated
        later = STAGES[STAGES.index(self.stage) + 1 :]
        rest = sum(self.estimates.get(s, 0.0) for s in later) * self.calibration
        # How sure: the share of the seconds left that rests on rates measured on this machine in this job (the current
        # stage's own rate as far as it is trusted; later stages count as measured once a finished stage calibrated them).
        measured_now = current - (1.0 - trust) * estimated if progressed >= 0.02 and elapsed >= 1.0 else 0.0
        measured_later = rest if self.calibration != 1.0 else 0.0
        self.measured_share = round((measured_now + measured_later) / (current + rest), 3) if current + rest > 0 else 1.0
        return current + rest
