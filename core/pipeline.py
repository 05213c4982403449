"""``customize``: from a spec (class texts and/or example images) to an exported student.

Stages: preparing (teacher embeddings of prompts and prototypes), synthesizing (inversion),
distilling (meta-KD), exporting (ONNX, TorchScript, model card, samples grid, metrics).
Progress and cancellation reach the engine as callbacks; nothing here writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import torch
from torchvision.utils import make_grid

from core.artifacts import (
    CARD_FILE,
    INT8_ONNX_FILE,
    METRICS_FILE,
    ONNX_FILE,
    OPENVINO_BIN_FILE,
    OPENVINO_XML_FILE,
    SAMPLES_FILE,
    TFLITE_FILE,
    TORCHSCRIPT_FILE,
)
from core.bank import BUILD_BATCH, DEFAULT_BANK_IMAGES, BankStore, bank_key, obtain_bank, teacher_sha256
from core.calibration import calibrate_unknown
from core.checkpoints import SURROGATE, Checkpoints, surrogate_from_bytes, surrogate_to_bytes
from core.coverage import Coverage, coverage_warnings, prior_coverage, surrogate_coverage
from core.distill import DISTILL_AUGMENT, DistillConfig, Distiller
from core.estimate import (
    BACKWARD_FACTOR,
    REFERENCE_TEACHER_FLOPS,
    STAGES,
    TEACHER_FORWARD_S,
    BankFacts,
    Eta,
    PoolFacts,
    estimate_stage_seconds,
)
from core.export import PARITY_IMAGES, export_onnx, export_openvino, export_tflite, export_torchscript, quantize_onnx_int8
from core.pools import (
    MAX_PRIOR_IMAGES,
    PoolEmbeddingsKey,
    PoolSource,
    PoolSplit,
    PoolViews,
    fit_pool_prior,
    held_out_agreement,
    obtain_pool_views,
    pool_embeddings_key,
    split_indices,
    split_pool,
)
from core.quality import estimate_quality, quality_warnings
from core.spec import CustomizeSpec, ResolvedSpec, generator_for, noise_generator_warning, resolve
from core.stored import CachedViews, ObjectStore, StepCallback
from core.students import Student, count_flops, count_parameters, create_student_for
from core.synthesis import (
    ClassPrompts,
    InversionTargets,
    SurrogateChunk,
    SurrogateSet,
    SynthesisConfig,
    assemble,
    batch_ranges,
    build_targets,
    plan_chunks,
    prior_sampler,
    surrogate_sha256,
    synthesize,
    synthesize_batches,
)
from core.teachers.base import TIMING_IMAGES, Teacher, seconds_per_image

# Seconds per stage when the cost model has no reference for a job (a GPU budget, an unknown teacher): only their ratios
# matter for the progress fraction, and the ETA replaces them with measured rates as stages finish.
FALLBACK_STAGE_SECONDS = {"pool": 0.0, "preparing": 12.0, "bank": 2.0, "synthesizing": 350.0, "distilling": 210.0, "exporting": 30.0}
SAMPLES_PER_CLASS = 8
SAMPLE_UPSCALE_TO = 96  # samples.png shows each image at least this many pixels wide

INT8_CALIBRATION_IMAGES = 256  # synthesized images that calibrate the INT8 student's activation ranges


class CustomizeCancelled(Exception):
    """Raised when ``should_cancel`` answers True; nothing is returned."""

    code = "cancelled"


@dataclass(frozen=True)
class Progress:
    stage: str  # one of STAGES
    stage_fraction: float  # 0..1 within the stage
    fraction: float  # 0..1 over the whole job
    eta_seconds: float | None  # remaining time for the whole job, once it can be estimated
    metrics: dict[str, float] = field(default_factory=dict)
    eta_measured_share: float | None = None  # how sure: the share of eta_seconds resting on rates measured in this job
    message: str | None = None  # a note for the job's events (how its sample bank was obtained)
    # The job's duration as estimated on this worker before it ran (its teacher timed here, its pool's and bank's state
    # known): a service shows it in place of the submission's estimate. None where the cost model has no reference.
    estimated_seconds: float | None = None


@dataclass
class CustomizeResult:
    student: Student
    surrogate: SurrogateSet
    artifacts: dict[str, bytes]  # file name -> content
    metrics: dict[str, object]
    card: dict[str, object]


ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[], bool]


def stage_estimates(spec: ResolvedSpec) -> dict[str, float]:
    """Seconds per stage of a resolved spec before it runs (core.estimate), else the fallback's proportions."""
    return estimate_stage_seconds(spec.model_dump(mode="json")) or dict(FALLBACK_STAGE_SECONDS)


def job_fraction(estimates: Mapping[str, float], stage: str, stage_fraction: float) -> float:
    """The whole job's progress (0..1) at ``stage_fraction`` of ``stage``: stages weighed by their estimated seconds."""
    done_before = sum(estimates[s] for s in STAGES[: STAGES.index(stage)])
    return min(1.0, (done_before + estimates[stage] * stage_fraction) / sum(estimates.values()))


class _Tracker:
    """Turns per-step callbacks into Progress events and cancellation checks. The overall fraction weighs stages by
    their estimated seconds (core.estimate); the ETA comes from measured rates (core.estimate.Eta)."""

    def __init__(
        self, on_progress: ProgressCallback | None, should_cancel: CancelCheck | None, stage_seconds: dict[str, float] | None = None
    ) -> None:
        self.on_progress, self.should_cancel = on_progress, should_cancel
        self.estimates = stage_seconds or FALLBACK_STAGE_SECONDS
        self.estimated_seconds = round(sum(stage_seconds.values()), 1) if stage_seconds else None
        self.eta = Eta(dict(self.estimates))
        self.stage_times: dict[str, float] = {}
        self.last_fraction = 0.0

    def revise(self, stage_seconds: Mapping[str, float] | None) -> None:
        """The stages after the current one re-priced from what the job learnt running (the thin classes its preparing
        found switch distillation to meta-KD, three times the student's steps): the ETA and the estimate say it."""
        if stage_seconds is None or self.eta.stage is None or self.estimated_seconds is None:
            return
        later = STAGES[STAGES.index(self.eta.stage) + 1 :]
        self.estimates = {stage: (stage_seconds[stage] if stage in later else seconds) for stage, seconds in self.estimates.items()}
        self.eta.estimates = dict(self.estimates)
        self.estimated_seconds = round(sum(self.estimates.values()), 1)

    def update(self, stage: str, stage_fraction: float, metrics: dict[str, float] | None = None, message: str | None = None) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise CustomizeCancelled(f"cancelled during {stage}")
        # Never backwards: a revised estimate (``revise``) re-weighs the stages, and a bar that drops reads as lost work.
        fraction = self.last_fraction = max(self.last_fraction, job_fraction(self.estimates, stage, stage_fraction))
        eta = self.eta.seconds_left(stage_fraction) if self.eta.stage == stage else None
        share = self.eta.measured_share if eta is not None else None
        if self.on_progress is not None:
            self.on_progress(
                Progress(
                    stage,
                    stage_fraction,
                    fraction,
                    eta,
                    metrics=metrics or {},
                    eta_measured_share=share,
                    message=message,
                    estimated_seconds=self.estimated_seconds,
                )
            )

    def timed(self, stage: str) -> _StageTimer:
        return _StageTimer(self, stage)

    def resumed(self, then: Callable[[str, int, int], None] | None) -> Callable[[str, int, int], None]:
        """An ``on_resume`` callback that first tells the ETA, then ``then``."""

        def on_resume(stage: str, step: int, total: int) -> None:
            if self.eta.stage == stage and total:
                self.eta.resume(step / total)
            if then is not None:
                then(stage, step, total)

        return on_resume


class _StageTimer:
    def __init__(self, tracker: _Tracker, stage: str) -> None:
        self.tracker, self.stage = tracker, stage

    def __enter__(self) -> _StageTimer:
        self.began = time.monotonic()
        self.tracker.eta.start_stage(self.stage)
        self.tracker.update(self.stage, 0.0)
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.tracker.stage_times[self.stage] = round(time.monotonic() - self.began, 3)
        self.tracker.eta.end_stage(self.stage)
        if exc_type is None:
            self.tracker.update(self.stage, 1.0)


# A CPU job estimated to run longer than this is refused before it starts, with what would make it fast (a pool, a GPU
# worker, a sample bank built ahead): an hour of a user's CPU is no fair default to spend without asking.
CPU_JOB_MAX_SECONDS = 3600.0


class JobTooSlowError(RuntimeError):
    """A CPU job whose estimate is over its limit (``CPU_JOB_MAX_SECONDS``)."""

    code = "too_slow_for_cpu"


def refuse_if_too_slow(spec: ResolvedSpec, estimates: Mapping[str, float] | None, limit: float | None) -> None:
    """``JobTooSlowError`` naming the alternatives when a CPU job's estimate is over ``limit`` seconds (None: no limit)."""
    if limit is None or estimates is None or spec.budget != "cpu" or sum(estimates.values()) <= limit:
        return
    total, slowest = sum(estimates.values()), max(estimates, key=lambda stage: estimates[stage])
    raise JobTooSlowError(
        f"this job would take about {total / 3600:.1f} hours on a 2-core CPU ({slowest}: {estimates[slowest] / 3600:.1f} h; "
        f"limit {limit / 3600:.1f} h), so it was not started. Faster ways: give it a pool of your unlabelled images "
        '("synthesis": {"pool": "pool_..."}: each image is embedded once, and later jobs on it skip the teacher); run it on a '
        'GPU worker ("device": "cuda"); or build the teacher\'s sample bank ahead with `clipforge bank build` on any '
        "machine, a GPU one best (a bank in the service's storage serves every worker)"
    )


class GeneratorUnavailableError(ValueError):
    """generator "decoder" without a decoder named in the spec or paired with the teacher."""

    code = "generator_unavailable"


def resolved_generator(spec: CustomizeSpec, teacher: Teacher) -> tuple[str, tuple[tuple[str, object], ...]]:
    """The generator name and factory options (core.spec.generator_for): "auto" becomes the teacher's paired decoder,
    else Fourier."""
    generator, decoder = generator_for(spec.synthesis, teacher.paired_decoder)
    if generator != "decoder":
        return generator, ()
    if decoder is None:
        raise GeneratorUnavailableError(f"teacher {teacher.name!r} has no paired decoder; name one in synthesis.decoder or pick fourier")
    return generator, (("decoder", decoder), ("prior", spec.synthesis.prior or "fitted"))


def synthesis_config(spec: CustomizeSpec, teacher: Teacher) -> SynthesisConfig:
    # The spec and the engine config share field names; a field one lacks fails loudly here.
    generator, options = resolved_generator(spec, teacher)
    fields = spec.synthesis.model_dump(exclude={"decoder", "generator", "prior", "pool", "pool_prior", "pool_views"}, exclude_none=True)
    return SynthesisConfig(**fields, generator=generator, generator_options=options)


def resolved_spec(spec: CustomizeSpec, teacher: Teacher) -> ResolvedSpec:
    """``spec`` resolved (core.spec.resolve) for ``teacher`` on the device it lives on; a ResolvedSpec as it is.

    Every function here takes either: a caller that resolved the job's spec once (the worker) passes it on, and
    nothing is filled in twice."""
    return resolve(spec, teacher.device.type, teacher)


def distill_config(spec: CustomizeSpec) -> DistillConfig:
    # Unset fields (a spec not resolved against a budget) keep the engine's defaults.
    return DistillConfig(**spec.distillation.model_dump(exclude={"thin_class_method"}, exclude_none=True))  # applied in prepare


def class_prompts(spec: CustomizeSpec, examples: Mapping[str, torch.Tensor] | None) -> list[ClassPrompts]:
    examples = examples or {}
    prompts = []
    for c in spec.classes:
        images = examples.get(c.name)
        if c.images and images is None:
            raise ValueError(f"class {c.name!r} names example images but none were supplied")
        text = c.prompt_text
        if text is not None and spec.constraint:
            text = f"{text}, {spec.constraint}"
        prompts.append(ClassPrompts(text, images))
    return prompts


def resolved_styles(spec: CustomizeSpec, teacher: Teacher) -> list[str]:
    """The spec's style dictionary, else the teacher's own, else the paper-like default."""
    if spec.styles is not None:
        return list(spec.styles)
    return list(teacher.default_styles)


LABEL_WIDTH = 120  # pixels left of each row of samples.png for its class name


def samples_grid(surrogate: SurrogateSet, class_names: list[str]) -> bytes:
    """PNG bytes: one row per class, labelled with its name, up to SAMPLES_PER_CLASS synthesized images each."""
    from PIL import Image, ImageDraw

    rows = []
    for k in range(len(class_names)):
        picked = surrogate.images[surrogate.labels == k][:SAMPLES_PER_CLASS]
        row = torch.zeros(SAMPLES_PER_CLASS, *surrogate.images.shape[1:])
        row[: len(picked)] = picked
        rows.append(row)
    padding = 1
    grid = make_grid(torch.cat(rows), nrow=SAMPLES_PER_CLASS, padding=padding, pad_value=1.0)
    scale = max(1, SAMPLE_UPSCALE_TO // surrogate.images.shape[-1])
    grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    images = Image.fromarray(array)
    labelled = Image.new("RGB", (LABEL_WIDTH + images.width, images.height), "white")
    labelled.paste(images, (LABEL_WIDTH, 0))
    draw = ImageDraw.Draw(labelled)
    row_height = images.height / len(class_names)
    for k, name in enumerate(class_names):
        text = name if len(name) <= 18 else name[:17] + "…"
        draw.text((4, int((k + 0.5) * row_height)), text, fill="black", anchor="lm")
    buffer = io.BytesIO()
    labelled.save(buffer, format="PNG")
    return buffer.getvalue()


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("clipforge", "torch", "torchvision", "open_clip_torch", "onnx", "onnxruntime"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


@dataclass(frozen=True)
class Preparation:
    """What every part of a job computes first, the same way in every process: the spec with its budget filled in, the
    synthesis config, the style dictionary and the teacher's inversion targets. It draws nothing from any RNG."""

    spec: ResolvedSpec
    synthesis: SynthesisConfig
    styles: list[str]
    targets: InversionTargets
    coverage: Coverage  # how well the generator's prior covers each class (core.coverage); its thin classes are in synthesis
    pool_prior: dict[str, object] | None = None  # the prior fitted on the job's pool (core.pools.fit_pool_prior), if any
    pool: PoolSplit | None = None  # the job's pool with its cached views, split once: distilled-on and held-out images
    bank: CachedViews | None = None  # the sample bank the job draws from (``with_bank``; a pool's images with "pool"), if any
    bank_summary: dict[str, object] | None = None  # what the metrics say of it: how it was obtained, or why there is none
    pool_summary: dict[str, object] | None = None  # how the pool's embeddings were obtained (core.pools.obtain_pool_views)

    @property
    def used_styles(self) -> list[str]:
        return self.styles if self.spec.synthesis.use_styles else []


PoolInput = torch.Tensor | PoolSource | PoolViews


# A student's input size on the cpu budget when the spec names none: the teacher's up to this. Every distillation step
# costs the square of it (a 224 px small_cnn 49 times a 32 px one), and a CPU budget is a budget of steps.
CPU_STUDENT_MAX_SIZE = 32


def student_image_size(spec: ResolvedSpec, teacher: Teacher) -> int:
    """The student's input size: the spec's, else the teacher's (at most CPU_STUDENT_MAX_SIZE on the cpu budget)."""
    if spec.student.image_size:
        return int(spec.student.image_size)
    return min(teacher.image_size, CPU_STUDENT_MAX_SIZE) if spec.budget == "cpu" else teacher.image_size


def working_size(spec: ResolvedSpec, teacher: Teacher) -> int:
    """The size a job keeps its pool's images at: the student's input size (never the teacher's, when larger)."""
    return student_image_size(spec, teacher)


def pool_source(spec: ResolvedSpec, teacher: Teacher, pool: torch.Tensor | PoolSource) -> PoolSource:
    """The job's pool images as a PoolSource kept at the job's working size."""
    size = working_size(spec, teacher)
    source = pool if isinstance(pool, PoolSource) else PoolSource.from_pixels(pool, size)
    if source.pixels.shape[-1] != size:
        raise ValueError(f"the pool's images are kept at {source.pixels.shape[-1]} px, the job's student sees {size} px")
    return source


# A CPU teacher of more FLOPs an image than this embeds a pool through onnxruntime (core.teachers.onnx_tower: INT8 where
# it agrees with torch on the job's own images and classes, fp32 otherwise), and its estimate is priced with its timed
# cost; a smaller one (the bundled teachers, 34 MFLOPs, about 1 ms) gains nothing worth an export, and its timing is
# mostly per-call overhead that a busy machine inflates tenfold. Counted, not timed: every process decides alike.
LARGE_TEACHER_FLOPS = 1e9  # open_clip ViT-B-32 at 224 px: 5.9 GFLOPs
TOWER_CHECK_IMAGES = 32  # pool images the INT8 tower is checked on against torch, with the job's classes
POOL_ENCODERS = ("torch", "onnxruntime-int8", "onnxruntime-fp32")


@dataclass(frozen=True)
class PoolEncoder:
    """The image tower that embeds a pool, and what the metrics say of the choice."""

    encode: Callable[[torch.Tensor], torch.Tensor]
    name: str  # "torch", "onnxruntime-fp32" or "onnxruntime-int8": part of the embeddings' key
    record: dict[str, object]


def pool_encoder(
    spec: ResolvedSpec,
    teacher: Teacher,
    source: PoolSource,
    tower_dir: Path | None,
    *,
    min_flops: float = LARGE_TEACHER_FLOPS,
    report: Callable[[], None] | None = None,
    **thresholds: float,
) -> PoolEncoder:
    """torch for a GPU teacher, a fast one or without ``tower_dir`` (where the towers are cached); else the onnxruntime
    tower that agrees with torch on TOWER_CHECK_IMAGES of the pool's images and the job's classes (``thresholds``:
    choose_image_encoder's min_cosine and min_top1). ``report()`` after each tower is ready (the first export of a
    ViT-B-32 takes 15 s, its quantisation 5 s: a job's progress goes on meanwhile)."""
    if tower_dir is None or teacher.device.type != "cpu" or teacher_flops(teacher) < min_flops:
        return PoolEncoder(teacher.encode_image, "torch", {"backend": "torch"})
    from core.teachers.onnx_tower import cached_tower, choose_image_encoder

    for precision in ("fp32", "int8"):  # made (or found) here one at a time; a failure is choose_image_encoder's to record
        with contextlib.suppress(Exception):
            cached_tower(teacher, tower_dir, precision)
        if report is not None:
            report()

    check = torch.arange(min(TOWER_CHECK_IMAGES, len(source)))
    classes = teacher.class_embeddings([c.prompt_text or c.name for c in spec.classes])
    encode, record = choose_image_encoder(teacher, source.at(check, teacher.image_size), classes, cache_dir=tower_dir, **thresholds)
    name = "torch" if record.get("backend") == "torch" else f"onnxruntime-{record['precision']}"
    return PoolEncoder(encode, name, record)


def pool_key(spec: ResolvedSpec, teacher: Teacher, source: PoolSource, encoder: str = "torch") -> PoolEmbeddingsKey:
    """The key of the teacher's embeddings of the pool a job needs (core.pools)."""
    views, digest = spec.synthesis.pool_views, teacher_sha256(teacher)
    return pool_embeddings_key(source, digest, teacher.name, teacher.image_size, views=views, augment=DISTILL_AUGMENT, encoder=encoder)


def pool_views(
    spec: CustomizeSpec,
    teacher: Teacher,
    pool: PoolInput,
    store: ObjectStore | None = None,
    *,
    encoder: PoolEncoder | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> PoolViews:
    """The "pool" stage: the teacher's embeddings of the job's pool images and of their views (core.pools), loaded from
    ``store`` or built (and stored there) now with ``encoder`` (torch by default); ``pool``: its images (a tensor in
    [0, 1], or a streamed PoolSource)."""
    if isinstance(pool, PoolViews):
        return pool
    spec = resolved_spec(spec, teacher)
    source = pool_source(spec, teacher, pool)
    encoder = encoder or PoolEncoder(teacher.encode_image, "torch", {"backend": "torch"})
    views = obtain_pool_views(store, source, pool_key(spec, teacher, source, encoder.name), encoder.encode, on_step=on_step)
    return dataclasses.replace(views, summary={**views.summary, "encoder_choice": encoder.record})


_DECODER_SECONDS: dict[tuple[str, str], float] = {}  # (decoder, prior) -> seconds per decoded image, timed in this process


@torch.no_grad()
def decoder_seconds_per_image(synthesis: SynthesisConfig, teacher: Teacher) -> float:
    """The generator's prior samples, timed once per process and (decoder, prior) on a batch as a bank decodes them
    (core.bank.BUILD_BATCH) after a warm-up: each call has a fixed cost (0.05 to 0.25 s here) that a few samples would
    price as hours of a 16,384-sample bank."""
    options = dict(synthesis.generator_options)
    name = (str(options.get("decoder")), str(options.get("prior")))
    if name not in _DECODER_SECONDS:
        sample = prior_sampler(synthesis, teacher.image_size, teacher.device)
        sample(1, torch.Generator().manual_seed(0))
        began = time.perf_counter()
        sample(BUILD_BATCH, torch.Generator().manual_seed(1))
        _DECODER_SECONDS[name] = (time.perf_counter() - began) / BUILD_BATCH
    return _DECODER_SECONDS[name]


def bank_to_build(spec: ResolvedSpec, teacher: Teacher, request: BankRequest | None, *, timed: bool = True) -> BankFacts | None:
    """The sample bank the job's "bank" stage will build (none is stored for its key), priced with its decoder's cost
    (``timed``: as timed here; else the reference decoder's)."""
    if request is None or request.store.exists is None:
        return None
    synthesis = synthesis_config(spec, teacher)
    if bank_use(synthesis, spec.distillation.fresh_share or 0.0) is not None:
        return None
    key = bank_key(teacher, synthesis, DISTILL_AUGMENT, images=request.images)
    if key is None or request.store.exists(key.storage_key):
        return None
    return BankFacts(key.images, key.views, decoder_seconds_per_image(synthesis, teacher) if timed else None)


def embed_pool_ahead(
    spec: ResolvedSpec,
    teacher: Teacher,
    source: PoolSource,
    store: ObjectStore,
    tower_dir: Path | None,
    on_step: Callable[[int, int], None] | None = None,
) -> PoolViews:
    """A pool's embeddings made before any job names it (`clipforge pools embed`), stored where jobs look for them. The
    job's classes are not known yet: the onnxruntime tower is checked on the teacher's own vocabulary, and a job that
    finds INT8 disagreeing on its classes embeds the pool again with fp32 (another key)."""
    vocabulary = CustomizeSpec.model_validate({"classes": list(teacher.vocabulary[:VOCABULARY_CHECK_CLASSES])}).classes
    checked = spec.model_copy(update={"classes": vocabulary})
    return pool_views(spec, teacher, source, store, encoder=pool_encoder(checked, teacher, source, tower_dir), on_step=on_step)


VOCABULARY_CHECK_CLASSES = 16  # names of the teacher's vocabulary an ahead-of-time INT8 check classifies into


def tower_seconds(teacher: Teacher, tower_dir: Path | None) -> float | None:
    """The INT8 onnxruntime tower's seconds per image, timed once per loaded teacher, where an earlier job cached it
    (``pool_encoder`` uses it where it agrees with torch); None otherwise (the pool is priced at the teacher's cost)."""
    if tower_dir is None or teacher.device.type != "cpu" or teacher_flops(teacher) < LARGE_TEACHER_FLOPS:
        return None
    from core.teachers.onnx_tower import OnnxImageTower, tower_path

    path = tower_path(teacher, tower_dir, "int8")
    if not path.is_file():
        return None
    cached = getattr(teacher, "_int8_seconds_per_image", None)
    if cached is None:
        try:
            tower = OnnxImageTower(path, teacher.image_size, "int8")
        except Exception:  # unreadable: the pool stage rebuilds it; priced at the teacher's cost meanwhile
            return None
        pixels = torch.rand(TIMING_IMAGES, 3, teacher.image_size, teacher.image_size, generator=torch.Generator().manual_seed(0))
        tower.encode(pixels[:1])
        began = time.perf_counter()
        tower.encode(pixels)
        cached = (time.perf_counter() - began) / TIMING_IMAGES
        teacher._int8_seconds_per_image = cached  # type: ignore[attr-defined]
    return cached


def job_estimates(
    spec: ResolvedSpec,
    teacher: Teacher,
    pool: PoolInput | None = None,
    store: ObjectStore | None = None,
    bank: BankRequest | None = None,
    tower_dir: Path | None = None,
    *,
    timed: bool = True,
) -> dict[str, float] | None:
    """Seconds per stage of the job before it runs (core.estimate), its teacher's passes priced as timed on this machine
    (``seconds_per_image``), its pool's by whether their embeddings are stored already, a sample bank still to build with
    its decoder's cost."""
    facts = None
    if isinstance(pool, PoolViews):
        facts = PoolFacts(len(pool.views), embedded=True)
    elif pool is not None:
        source = pool_source(spec, teacher, pool)
        keys = [pool_key(spec, teacher, source, encoder).storage_key for encoder in POOL_ENCODERS]
        stored = store is not None and store.exists is not None and any(store.exists(key) for key in keys)
        tower = tower_seconds(teacher, tower_dir) if timed and not stored else None
        facts = PoolFacts(len(source), embedded=stored, seconds_per_image=tower)
    if spec.budget != "cpu":
        return None
    # Timed here, whatever the teacher: a stage's share of the progress bar is its share of the estimate, and a slow
    # machine's bank is a third of the job, not the 2 % reference prices made it. The refusal prices on the reference
    # CPU (``timed=False``), so a busy machine never refuses a job.
    seconds = seconds_per_image(teacher) if timed else TEACHER_FORWARD_S * teacher_flops(teacher) / REFERENCE_TEACHER_FLOPS
    building = bank_to_build(spec, teacher, bank, timed=timed) if pool is None else None
    student = student_step_seconds(spec, teacher) if timed else None
    return estimate_stage_seconds(
        spec.model_dump(mode="json"), pool=facts, teacher_seconds_per_image=seconds, bank=building, student_seconds_per_image=student
    )


_STUDENT_SECONDS: dict[tuple[str, int, int, str], float] = {}  # (arch, size, classes, device) -> seconds per image, timed here
STUDENT_TIMING_BATCH = 64  # images in each timed training step: the distillation's batch on the cpu budget
STUDENT_TIMING_STEPS = 3  # timed steps, after one warm-up


def student_step_seconds(spec: ResolvedSpec, teacher: Teacher) -> float:
    """A training step of the job's student at its input size on this machine, in seconds per image: timed once per
    process and (architecture, size, classes, device): the fastest of STUDENT_TIMING_STEPS steps of STUDENT_TIMING_BATCH
    images after a warm-up (about 0.1 s for small_cnn at 32 px), so that the distillation's share of the estimate and of the progress
    bar is measured as the teacher's is, not the reference machine's figure on a machine three times slower."""
    size = student_image_size(spec, teacher)
    key = (spec.student.arch, size, len(spec.classes), str(teacher.device))
    if key not in _STUDENT_SECONDS:
        with torch.random.fork_rng(devices=[teacher.device] if teacher.device.type == "cuda" else []):
            torch.manual_seed(0)
            student = create_student_for(teacher, spec.student.arch, len(spec.classes), size).train()
            optimizer = torch.optim.SGD(student.parameters(), lr=0.0)  # a step's cost, not its effect: no learning
            pixels = torch.rand(STUDENT_TIMING_BATCH, 3, size, size, device=teacher.device)
            labels = torch.randint(len(spec.classes), (STUDENT_TIMING_BATCH,), device=teacher.device)
            steps = []
            for _ in range(STUDENT_TIMING_STEPS + 1):
                began = time.perf_counter()
                loss = torch.nn.functional.cross_entropy(student(pixels), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps.append(time.perf_counter() - began)
            # The fastest step after the warm-up, as timeit takes the best of its repeats: a step another process
            # interrupted priced the reference job's distillation 1.8x over (real-teacher.md, the RN50 run).
            _STUDENT_SECONDS[key] = min(steps[1:]) / STUDENT_TIMING_BATCH
    return _STUDENT_SECONDS[key]


def prepare(
    spec: CustomizeSpec,
    teacher: Teacher,
    examples: Mapping[str, torch.Tensor] | None = None,
    *,
    coverage: Coverage | None = None,
    pool: PoolInput | None = None,
    on_step: StepCallback | None = None,
) -> Preparation:
    """The preparing stage: ``spec`` resolved for ``teacher`` and the teacher's embeddings of its prompts. ``coverage``:
    the prior's coverage as this job's first preparation measured it (deterministic, so only saved work): a split job's
    chunks and distillation take it instead of decoding and scoring the prior samples again. ``pool``: the spec's pool,
    best with its embeddings (``pool_views``; images alone are embedded here); with ``synthesis.pool_prior`` the prior is
    fitted on them. With the pool generator the pool's images and their cached embeddings are the job's bank.
    ``on_step(done, total)``: the coverage's teacher passes as they go."""
    spec = resolved_spec(spec, teacher)
    synthesis = synthesis_config(spec, teacher)
    if (pool is None) != (spec.synthesis.pool is None):
        raise ValueError("the spec names a pool and no pool images were given, or pool images came without one")
    pooled = pool_views(spec, teacher, pool) if pool is not None else None
    split = split_pool(pooled.views, spec.seed) if pooled is not None else None
    pool_prior, bank, bank_summary = None, None, None
    if synthesis.generator == "pool" and split is not None:  # the pool's images are the prior itself (core.generators.pool_images)
        synthesis = dataclasses.replace(synthesis, generator_options=(("images", split.train.images),))
        bank, bank_summary = split.train, pool_bank_summary(split.train)
    elif pooled is not None and spec.synthesis.pool_prior:
        train = split_indices(len(pooled.views), spec.seed)[0][:MAX_PRIOR_IMAGES]
        synthesis, pool_prior = with_pool_prior(synthesis, pooled.source.at(train, teacher.image_size), teacher.device)
    styles = resolved_styles(spec, teacher)
    targets = build_targets(teacher, class_prompts(spec, examples), styles if spec.synthesis.use_styles else [])
    if coverage is None:
        threshold = synthesis.coverage_threshold
        coverage = prior_coverage(teacher, targets.classifier, synthesis, seed=spec.seed, threshold=threshold, bank=bank, on_step=on_step)
    elif len(coverage.prior) != len(spec.classes) or coverage.threshold != synthesis.coverage_threshold:
        raise ValueError(f"the coverage given covers {len(coverage.prior)} classes at threshold {coverage.threshold}, not this job's")
    synthesis = affordable_thin_steps(spec, dataclasses.replace(synthesis, thin_classes=coverage.thin), teacher)
    return Preparation(
        with_thin_class_method(spec, coverage), synthesis, styles, targets, coverage, pool_prior, split, bank, bank_summary,
        pooled.summary if pooled is not None else None,
    )  # fmt: skip


# Teacher FLOPs the cpu budget spends at most on its thin classes' inversion steps (forward and backward of every cutout
# and of the image, every step): shapes-mini's 8-class job with every class thin spends 1.9e13; an open_clip ViT-B-32
# at 224 px (5.9 GFLOPs an image) would spend 1.6e15 on 4 classes, hours of a CPU. Counted in FLOPs, not timed seconds,
# so that every process of a job (a split job's chunks) makes the same choice.
THIN_STEPS_MAX_FLOPS = 1e14


def teacher_flops(teacher: Teacher) -> int:
    """FLOPs of one image through the teacher's image tower, counted once per loaded teacher."""
    cached = getattr(teacher, "_image_flops", None)
    if cached is None:
        cached = count_flops(teacher.model.visual, teacher.image_size)
        teacher._image_flops = cached  # type: ignore[attr-defined]
    return cached


def affordable_thin_steps(spec: ResolvedSpec, synthesis: SynthesisConfig, teacher: Teacher) -> SynthesisConfig:
    """The synthesis without its thin classes' inversion steps where the cpu budget cannot afford them on this teacher
    (``THIN_STEPS_MAX_FLOPS``): their images stay the prior's (or pool's) most class-like ones, as the teacher chose."""
    if spec.budget != "cpu" or synthesis.steps or not synthesis.thin_classes or not synthesis.thin_class_steps:
        return synthesis
    images = len(synthesis.thin_classes) * synthesis.images_per_class
    flops = images * synthesis.thin_class_steps * (synthesis.cutouts + 1) * BACKWARD_FACTOR * teacher_flops(teacher)
    return synthesis if flops <= THIN_STEPS_MAX_FLOPS else dataclasses.replace(synthesis, thin_class_steps=0)


def thin_steps_warning(synthesis: SynthesisConfig, spec: ResolvedSpec) -> list[str]:
    """Why a thin class got no inversion steps on the cpu budget, when the budget dropped them (``affordable_thin_steps``)."""
    if not synthesis.thin_classes or synthesis.thin_class_steps or not spec.synthesis.thin_class_steps:
        return []
    names = ", ".join(repr(spec.class_names[k]) for k in synthesis.thin_classes)
    return [
        f"the teacher finds few images like {names} among the prior's (or the pool's): their inversion steps would cost "
        "this teacher hours on a CPU, so their images are the most class-like ones it found; a GPU worker inverts them "
        "(the gpu budget), or a pool with images of them helps"
    ]


def pool_bank_summary(train: CachedViews) -> dict[str, object]:
    """What the metrics say of a pool generator's bank: the pool's distilled-on images and their cached embeddings."""
    return {"used": True, "status": "pool", "images": len(train), "views": train.views}


@dataclass(frozen=True)
class BankRequest:
    """Where a job's sample bank lives and its size (core.bank): a service's storage, the CLI's cache folder."""

    store: BankStore
    images: int = DEFAULT_BANK_IMAGES


def bank_use(synthesis: SynthesisConfig, fresh_share: float) -> str | None:
    """Why a job draws nothing from a bank (None: it would): a bank serves prior samples the teacher only scores (no
    inversion steps) and fresh prior samples in distillation."""
    if synthesis.steps and not fresh_share:
        return "the synthesis inverts every image and distillation draws no fresh prior samples"
    return None


def job_bank(
    teacher: Teacher,
    synthesis: SynthesisConfig,
    fresh_share: float,
    request: BankRequest | None,
    *,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[CachedViews | None, dict[str, object]]:
    """The sample bank a job on ``synthesis`` draws from, loaded from ``request.store`` or built there now, and what the
    metrics say of it; None (and why) when it cannot use one: no store, a generator without a named prior (a pool's
    prior is the job's own), or nothing a bank serves."""
    reason = "no bank store" if request is None else bank_use(synthesis, fresh_share)
    key = bank_key(teacher, synthesis, DISTILL_AUGMENT, images=request.images) if request is not None and reason is None else None
    if reason is None and key is None:
        reason = "a bank serves the decoder generator with a named prior, not this synthesis"
    if reason is not None or request is None or key is None:
        return None, {"used": False, "reason": reason}
    outcome = obtain_bank(request.store, teacher, synthesis, key, on_step=on_step)
    return outcome.bank, outcome.summary()


def with_bank(
    preparation: Preparation, teacher: Teacher, request: BankRequest | None, *, on_step: Callable[[int, int], None] | None = None
) -> Preparation:
    """The preparation with its sample bank (``job_bank``); a pool generator's job keeps its pool as its bank."""
    if preparation.pool is not None and preparation.bank is preparation.pool.train:
        return preparation
    fresh_share = preparation.spec.distillation.fresh_share or 0.0
    bank, summary = job_bank(teacher, preparation.synthesis, fresh_share, request, on_step=on_step)
    return dataclasses.replace(preparation, bank=bank, bank_summary=summary)


def uses_bank(preparation: Preparation, request: BankRequest | None) -> bool:
    """Whether the job has a "bank" stage: a store to keep a bank in, and batches or distillation that draw from one (a
    pool generator's job has its pool's instead)."""
    if preparation.pool is not None and preparation.bank is preparation.pool.train:
        return False
    return request is not None and bank_use(preparation.synthesis, preparation.spec.distillation.fresh_share or 0.0) is None


def bank_stage(
    preparation: Preparation,
    teacher: Teacher,
    request: BankRequest,
    report: Callable[[float, dict[str, float] | None, str | None], None],
) -> Preparation:
    """The "bank" stage (whole and split jobs alike): the sample bank loaded, or built and stored, with its progress,
    then its figures and event message (``bank_report``), through ``report(fraction, figures, message)``."""
    report(0.0, None, None)
    preparation = with_bank(preparation, teacher, request, on_step=lambda done, total: report(done / total, None, None))
    report(1.0, *bank_report(preparation))
    return preparation


def bank_report(preparation: Preparation) -> tuple[dict[str, float], str]:
    """The bank stage's last figures and the job's event message: built now, or reused (loaded in so many seconds)."""
    summary = preparation.bank_summary or {}
    status, seconds = str(summary.get("status")), float(summary.get("seconds") or 0.0)  # type: ignore[arg-type]
    figures = {"bank/reused": float(status == "reused"), "bank/images": float(summary.get("images") or 0), "bank/seconds": seconds}  # type: ignore[arg-type]
    what = f"sample bank {summary.get('key')} ({summary.get('images')} prior samples, {summary.get('views')} views each)"
    verb = {"reused": "reused", "built": "built", "rebuilt": f"rebuilt ({summary.get('reason')})"}.get(status, status)
    return figures, f"bank: {verb} {what} in {seconds:.1f} s"


def with_pool_prior(
    synthesis: SynthesisConfig, images: torch.Tensor, device: torch.device
) -> tuple[SynthesisConfig, dict[str, object] | None]:
    """The synthesis config drawing from a prior fitted on ``images`` (a pool's), and what the metrics say of it; the
    config unchanged (and why) when its generator is no decoder with an encoder or the pool is too small to fit on."""
    options = dict(synthesis.generator_options)
    prior = fit_pool_prior(synthesis.generator, options.get("decoder"), images, device)
    if isinstance(prior, str):
        return synthesis, {"used": False, "reason": prior}
    options["prior"] = prior
    summary = {"used": True, "images": len(images), "dimensions": prior.dimensions}
    return dataclasses.replace(synthesis, generator_options=tuple(options.items())), summary


def generator_metrics(synthesis: SynthesisConfig, pool_prior: dict[str, object] | None) -> dict[str, object]:
    """The generator, decoder and prior a job drew from: the prior is "pool" when fitted on the job's pool."""
    options = {k: _option_summary(k, v) for k, v in synthesis.generator_options}
    return {"name": synthesis.generator, **options, **({"pool_prior": pool_prior} if pool_prior else {})}


def _option_summary(name: str, value: object) -> object:
    """A generator option as the metrics show it: a prior fitted on the pool is "pool", the pool's images their count."""
    if isinstance(value, torch.Tensor):
        return len(value)
    return "pool" if name == "prior" and not isinstance(value, str) else value


def with_thin_class_method(spec: ResolvedSpec, coverage: Coverage) -> ResolvedSpec:
    """The spec a job distils with: its ``thin_class_method`` when the prior covers some class thinly (measured: meta-KD
    lifts the classes the prior never showed from 0.61 to 0.75 of the teacher, bench/results/experiments.md 2026-12-05)."""
    method = spec.distillation.thin_class_method
    if not coverage.thin or method is None or method == spec.distillation.method:
        return spec
    return spec.model_copy(update={"distillation": spec.distillation.model_copy(update={"method": method})})


def synthesis_plan(spec: CustomizeSpec, teacher: Teacher, batches_per_chunk: int, max_chunks: int) -> list[list[int]]:
    """The batch indices of each chunk the job's synthesis splits into (core.synthesis.plan_chunks); one chunk: no split.
    Needs no teacher pass, so a worker decides before preparing whether to split."""
    spec = resolved_spec(spec, teacher)
    batches = len(batch_ranges(len(spec.classes), synthesis_config(spec, teacher)))
    return plan_chunks(batches, batches_per_chunk, max_chunks)


ChunkProgress = Callable[[float], None]  # the chunk's own fraction done (0..1)


def synthesize_chunk(
    preparation: Preparation,
    teacher: Teacher,
    batch_indices: Sequence[int],
    *,
    on_progress: ChunkProgress | None = None,
    should_cancel: CancelCheck | None = None,
) -> SurrogateChunk:
    """One chunk of the synthesizing stage: the surrogate set's batches ``batch_indices`` (see synthesize_batches).
    CustomizeCancelled when ``should_cancel`` answers True (asked after every step and every batch)."""

    def on_step(done: int, total: int) -> None:
        if should_cancel is not None and should_cancel():
            raise CustomizeCancelled("cancelled during synthesizing")
        if on_progress is not None:
            on_progress(done / total)

    seed = preparation.spec.seed
    return synthesize_batches(
        teacher, preparation.targets, preparation.synthesis, list(batch_indices), seed=seed, on_step=on_step, bank=preparation.bank
    )


def assemble_surrogate(chunks: Sequence[SurrogateChunk]) -> SurrogateSet:
    """The surrogate set from its chunks (any order): bit for bit the set ``customize`` synthesizes in one process."""
    return assemble(chunks)


def customize(
    spec: CustomizeSpec,
    teacher: Teacher,
    *,
    examples: Mapping[str, torch.Tensor] | None = None,
    on_progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    checkpoints: Checkpoints | None = None,
    pool: PoolInput | None = None,
    bank: BankRequest | None = None,
    pool_store: ObjectStore | None = None,
    tower_dir: Path | None = None,
    max_cpu_seconds: float | None = CPU_JOB_MAX_SECONDS,
) -> CustomizeResult:
    """Run the whole method for ``spec`` with a loaded ``teacher`` (on the device it lives on).

    ``examples`` maps class names to example pixels (M, 3, H, W) in [0, 1] for image prompts. ``pool``: the images of
    the spec's ``synthesis.pool``: (N, 3, S, S) pixels in [0, 1] or a streamed ``PoolSource`` (core.pools); the "pool"
    stage embeds them and their views with the teacher once, or loads those embeddings from ``pool_store`` (by default
    ``bank.store``: where the CLI keeps its banks). ``tower_dir``: where a large CPU teacher's onnxruntime image towers are
    cached (``pool_encoder``); without it the pool is embedded with torch. ``max_cpu_seconds``: a CPU job estimated longer
    is refused before it starts (``JobTooSlowError``, naming faster ways); None: no limit.
    Deterministic for a given spec, seed, teacher and machine. A service splits the same work over processes:
    ``prepare``, ``synthesize_chunk`` for each chunk, ``assemble_surrogate``, ``distill_and_export``; the result is
    the same bit for bit (tests/core/test_chunked_synthesis.py). ``checkpoints``: where the surrogate set and the
    distillation's state are saved as the run goes, and resumed from (core.checkpoints): the same result again.
    ``bank``: where the job's sample bank is kept (core.bank); it is loaded, or built and stored the first time, in the
    "bank" stage, and the synthesis and distillation draw from it.
    """
    resolved = resolved_spec(spec, teacher)
    if pool is not None and not isinstance(pool, PoolViews):
        pool = pool_source(resolved, teacher, pool)
    pool_store = pool_store or (bank.store if bank is not None else None)
    estimates = job_estimates(resolved, teacher, pool, pool_store, bank, tower_dir)
    # Refused on the reference CPU's prices (the teacher's FLOPs), not on timings a busy machine can inflate tenfold.
    refuse_if_too_slow(resolved, job_estimates(resolved, teacher, pool, pool_store, bank, timed=False), max_cpu_seconds)
    tracker = _Tracker(on_progress, should_cancel, estimates)
    with torch.random.fork_rng(devices=[teacher.device] if teacher.device.type == "cuda" else []):
        torch.manual_seed(resolved.seed)
        if pool is not None:
            with tracker.timed("pool"):
                still = functools.partial(tracker.update, "pool", 0.0)
                encoder = pool_encoder(resolved, teacher, pool, tower_dir, report=still) if isinstance(pool, PoolSource) else None
                still()
                step = functools.partial(_fraction_of, functools.partial(tracker.update, "pool"))
                pool = pool_views(resolved, teacher, pool, pool_store, encoder=encoder, on_step=step)
        with tracker.timed("preparing"):
            step = functools.partial(_fraction_of, functools.partial(tracker.update, "preparing"))
            preparation = prepare(resolved, teacher, examples, pool=pool, on_step=step)
            # The prior's coverage of each class, as soon as it is known: a job's metrics event says it (coverage/NAME).
            names = preparation.spec.class_names
            if preparation.spec.distillation.method != resolved.distillation.method:
                tracker.revise(job_estimates(preparation.spec, teacher, pool, pool_store, bank, tower_dir))
            tracker.update("preparing", 1.0, {f"coverage/{name}": p for name, p in zip(names, preparation.coverage.prior, strict=True)})
        if uses_bank(preparation, bank):
            assert bank is not None
            with tracker.timed("bank"):
                preparation = bank_stage(preparation, teacher, bank, functools.partial(tracker.update, "bank"))
        else:
            preparation = with_bank(preparation, teacher, bank)  # none: the metrics say why
        with tracker.timed("synthesizing"):
            saved = checkpoints.load(SURROGATE) if checkpoints is not None else None
            if saved is not None:  # an earlier attempt synthesized it: the same set, as the seed fixes it
                surrogate = surrogate_from_bytes(saved)
                tracker.eta.resume(1.0)
                if checkpoints is not None and checkpoints.on_resume is not None:
                    checkpoints.on_resume("synthesizing", len(surrogate), len(surrogate))
                tracker.update("synthesizing", 1.0)
            else:
                surrogate = synthesize(
                    teacher,
                    preparation.targets,
                    preparation.synthesis,
                    seed=resolved.seed,
                    on_step=lambda done, total: tracker.update("synthesizing", done / total),
                    bank=preparation.bank,
                )
                if checkpoints is not None:
                    checkpoints.save(SURROGATE, surrogate_to_bytes(surrogate))
        return _distill_and_export(preparation, teacher, surrogate, tracker, checkpoints=checkpoints)


def _fraction_of(report: Callable[[float], None], done: int, total: int) -> None:
    report(done / total)


def distill_and_export(
    preparation: Preparation,
    teacher: Teacher,
    surrogate: SurrogateSet,
    *,
    on_progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    stage_seconds: Mapping[str, float] | None = None,
    extra_metrics: Mapping[str, object] | None = None,
    checkpoints: Checkpoints | None = None,
) -> CustomizeResult:
    """The distilling and exporting stages on a surrogate set synthesized elsewhere (a service's chunks): the student
    and artifacts ``customize`` makes from the same set. ``stage_seconds``: how long the earlier stages took, and
    ``extra_metrics``: how the set was made, both for the metrics. Progress fractions start where synthesis ends."""
    spec = preparation.spec
    tracker = _Tracker(on_progress, should_cancel, estimate_stage_seconds(spec.model_dump(mode="json")))
    tracker.stage_times.update(stage_seconds or {})
    with torch.random.fork_rng(devices=[teacher.device] if teacher.device.type == "cuda" else []):
        torch.manual_seed(spec.seed)
        return _distill_and_export(preparation, teacher, surrogate, tracker, extra_metrics, checkpoints=checkpoints)


def _distill_and_export(
    preparation: Preparation,
    teacher: Teacher,
    surrogate: SurrogateSet,
    tracker: _Tracker,
    extra_metrics: Mapping[str, object] | None = None,
    *,
    checkpoints: Checkpoints | None = None,
) -> CustomizeResult:
    spec, synthesis, targets, split = preparation.spec, preparation.synthesis, preparation.targets, preparation.pool
    # The student's initial weights come from torch's global RNG. Neither preparing nor synthesis draws from it, so it is
    # still where torch.manual_seed(seed) put it: re-seeding changes nothing in one process, and makes a process that
    # synthesized nothing (a service's distillation task) start the same student.
    torch.manual_seed(spec.seed)
    student = create_student_for(teacher, spec.student.arch, len(spec.classes), student_image_size(spec, teacher))
    if checkpoints is not None:  # a resumed stage tells the ETA that only what runs from there is this attempt's rate
        checkpoints = dataclasses.replace(checkpoints, on_resume=tracker.resumed(checkpoints.on_resume))
    with tracker.timed("distilling"):
        distillation = distill_config(spec)
        bank = preparation.bank
        fresh = distillation.fresh_share > 0 and bank is None
        sampler = prior_sampler(synthesis, teacher.image_size, teacher.device) if fresh else None
        from_pool = split.train if split is not None else None
        classifier = targets.classifier
        distiller = Distiller(student, teacher, classifier, distillation, seed=spec.seed, sampler=sampler, pool=from_pool, bank=bank)
        final_losses = distiller.fit(
            surrogate, on_step=lambda done, total, losses: tracker.update("distilling", done / total, losses), checkpoints=checkpoints
        )
    student = student.cpu().eval()
    with tracker.timed("exporting"):
        # No real data: the best a job can say is how often the student agrees with the teacher on unseen images.
        quality = estimate_quality(student, teacher, targets, synthesis, seed=spec.seed, bank=preparation.bank)
        texts = [c.prompt_text or c.name for c in spec.classes]
        unknown = calibrate_unknown(
            student, teacher, targets, texts, synthesis, seed=spec.seed, bank=preparation.bank, settings=spec.export.unknown
        )
        coverage = preparation.coverage.as_dict(spec.class_names)
        for name, after in zip(
            spec.class_names, surrogate_coverage(teacher, targets.classifier, surrogate, bank=preparation.bank), strict=True
        ):
            coverage[name]["surrogate"] = round(after, 4)
        metrics: dict[str, object] = {
            "budget": spec.budget,
            "quality": quality,
            "unknown": unknown,
            "warnings": [w for w in [noise_generator_warning(spec.synthesis.generator)] if w]
            + thin_steps_warning(synthesis, spec)
            + quality_warnings(quality, len(spec.classes))
            + coverage_warnings(coverage),
            "coverage": coverage,
            "surrogate_images": len(surrogate),
            "surrogate_sha256": surrogate_sha256(surrogate),
            "generator": generator_metrics(synthesis, preparation.pool_prior),
            "bank": preparation.bank_summary or {"used": False, "reason": "no bank store"},
            **({"pool_embeddings": preparation.pool_summary} if preparation.pool_summary else {}),
            "final_losses": final_losses,
            "student_parameters": count_parameters(student),
            "student_flops": count_flops(student, student.image_size),
            "teacher_image_parameters": count_parameters(teacher.model.visual),
            "teacher_image_flops": count_flops(teacher.model.visual, teacher.image_size),
            "styles": preparation.used_styles,
            **({"pool": pool_metrics(split, student, teacher, targets.classifier, distillation.pool_share)} if split is not None else {}),
            "stage_seconds": dict(tracker.stage_times),
            **(extra_metrics or {}),
        }
        card = model_card(spec, teacher, student, metrics)
        artifacts: dict[str, bytes] = {}
        card_metadata = {"clipforge_model_card": json.dumps(card)}  # in the ONNX and the TFLite file
        onnx_bytes = None
        if {"onnx", "onnx_int8", "openvino", "tflite"} & set(spec.export.formats):  # converted formats check against it
            onnx_bytes = export_onnx(student, student.image_size, opset=spec.export.opset, metadata=card_metadata)
        if "onnx" in spec.export.formats:
            artifacts[ONNX_FILE] = onnx_bytes  # type: ignore[assignment]
        if "onnx_int8" in spec.export.formats:
            assert onnx_bytes is not None
            calibration = torch.nn.functional.interpolate(surrogate.images[:INT8_CALIBRATION_IMAGES], size=student.image_size)
            artifacts[INT8_ONNX_FILE] = quantize_onnx_int8(onnx_bytes, calibration.numpy())
        if "torchscript" in spec.export.formats:
            artifacts[TORCHSCRIPT_FILE] = export_torchscript(student, student.image_size)
        checked = torch.nn.functional.interpolate(surrogate.images[:PARITY_IMAGES], size=student.image_size).numpy()
        parities: dict[str, object] = {}
        if "openvino" in spec.export.formats:
            assert onnx_bytes is not None
            artifacts[OPENVINO_XML_FILE], artifacts[OPENVINO_BIN_FILE], parities["openvino"] = export_openvino(onnx_bytes, checked)
        if "tflite" in spec.export.formats:
            assert onnx_bytes is not None
            artifacts[TFLITE_FILE], parities["tflite"] = export_tflite(
                student, student.image_size, onnx_bytes, checked, metadata=card_metadata
            )
        if parities:
            metrics["export_parity"] = parities
        artifacts[SAMPLES_FILE] = samples_grid(surrogate, spec.class_names)
    metrics["stage_seconds"] = dict(tracker.stage_times)
    card["metrics"] = metrics
    artifacts[CARD_FILE] = json.dumps(card, indent=2).encode()
    artifacts[METRICS_FILE] = json.dumps(metrics, indent=2).encode()
    return CustomizeResult(student, surrogate, artifacts, metrics, card)


def pool_metrics(split: PoolSplit, student: Student, teacher: Teacher, classifier: torch.Tensor, share: float) -> dict[str, object]:
    """What the job's pool gave: how many images, the share of each batch, and the student's agreement with the teacher
    on the held-out part (the one quality figure measured on real images of the user's domain)."""
    return {"images": len(split.train) + len(split.held_out), "distilled_on": len(split.train), "share": share,
            **held_out_agreement(student, classifier, teacher.logit_scale, split.held_out)}  # fmt: skip


def model_card(spec: CustomizeSpec, teacher: Teacher, student: Student, metrics: dict[str, object]) -> dict[str, object]:
    return {
        "format": "clipforge-model-card/1",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "classes": spec.class_names,
        "input": {
            "name": "pixels",
            "shape": ["batch", 3, student.image_size, student.image_size],
            "dtype": "float32",
            "layout": "NCHW, RGB, values in [0, 1]",
            "normalization": "built into the model",
            "mean": list(student.mean_values),
            "std": list(student.std_values),
        },
        "output": {"name": "logits", "shape": ["batch", len(spec.classes)], "labels": spec.class_names},
        # The "unknown" answer: below ``threshold`` the student's top probability at ``temperature`` is none of its
        # classes (core.calibration; clipforge_runtime applies it when asked).
        "unknown": metrics.get("unknown"),
        "student": {"arch": spec.student.arch, "image_size": student.image_size},
        "teacher": {"name": teacher.name, "image_size": teacher.image_size, "logit_scale": teacher.logit_scale},
        "spec": spec.model_dump(mode="json"),
        "metrics": metrics,
        "versions": _versions(),
    }
