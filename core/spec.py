"""The customization job spec: a torch-free pydantic model shared by the engine, the CLI and the API.

Importing this module must never import torch: the API process validates specs with it.
Every field has a default, so ``{"classes": ["cat", "dog"]}`` is a complete spec. Fields left None are filled in
once per job by ``resolve`` (the one place that does it; the worker, the pipeline and the API's estimate call it),
which returns a ``ResolvedSpec``: the budget's values for the device the job runs on, the teacher named.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from core.student_catalog import STUDENTS, student_entry, student_names

MAX_CLASSES = 1000
MAX_CLASS_TEXT_CHARS = 300
MAX_STYLES = 64
MAX_STYLE_CHARS = 100

# The teacher of a spec that names none: the service's ``default_teacher`` setting (service.settings) defaults to it,
# the API fills it in at submission from that setting, and ``clipforge customize`` uses it directly.
DEFAULT_TEACHER = "shapes-mini"

# Styles the paper's dictionary names ("pattern", "illustration", "photorealism") and their
# kin: each image gets one, as "<class text> in the style of <style>".
DEFAULT_STYLES: tuple[str, ...] = (
    "pattern",
    "illustration",
    "photorealism",
    "sketch",
    "painting",
    "cartoon",
    "line drawing",
    "blurry photo",
    "noisy photo",
    "watercolor",
    "pixel art",
    "flat drawing",
    "outline drawing",
    "close-up photo",
    "low contrast photo",
    "grainy picture",
)

# Everyday objects (CIFAR-100's fine labels): the out-of-class texts of a teacher that names no vocabulary of its own.
DEFAULT_VOCABULARY: tuple[str, ...] = (
    "apple",
    "aquarium fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak tree",
    "orange",
    "orchid",
    "otter",
    "palm tree",
    "pear",
    "pickup truck",
    "pine tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow tree",
    "wolf",
    "woman",
    "worm",
)
DistillMethod = Literal["ce", "kd", "ce_kd", "meta_kd", "meta_ce_kd"]
GeneratorName = Literal["auto", "fourier", "pixel", "decoder", "pool"]
InversionObjective = Literal["matching", "bn_inversion"]
# onnx_int8: statically quantized, calibrated on synthesized images; openvino: OpenVINO IR converted from the ONNX file;
# tflite: a TFLite flatbuffer converted from the torch student by litert-torch
ExportFormat = Literal["onnx", "torchscript", "onnx_int8", "openvino", "tflite"]


StyleText = Annotated[str, Field(min_length=1, max_length=MAX_STYLE_CHARS)]


def normalise_text(text: str) -> str:
    """NFKC, collapsed whitespace; the form in which class texts are compared for duplicates."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassSpec(Strict):
    name: Annotated[str, Field(min_length=1, max_length=MAX_CLASS_TEXT_CHARS)]  # the label the student outputs
    text: Annotated[str | None, Field(max_length=MAX_CLASS_TEXT_CHARS)] = None  # prompt text; None: the name, unless images are given
    images: list[str] = Field(default_factory=list, max_length=64)  # upload ids of example images (image prompts)

    @field_validator("name", "text")
    @classmethod
    def _clean(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if any(unicodedata.category(ch) == "Cc" for ch in value):
            raise ValueError("must not contain control characters")
        value = normalise_text(value)
        if not value:
            raise ValueError("must not be empty or whitespace")
        return value

    @property
    def prompt_text(self) -> str | None:
        """The text used for image-text matching; None for a class given by images alone."""
        if self.text is not None:
            return self.text
        return None if self.images else self.name


class SynthesisSpec(Strict):
    # Fields left None take the job's budget (see BUDGETS).
    images_per_class: Annotated[int | None, Field(ge=1, le=1024)] = None  # surrogate images synthesized per class
    steps: Annotated[int | None, Field(ge=0, le=5000)] = None  # optimisation steps per image batch (0: prior samples only)
    lr: Annotated[float, Field(gt=0, le=10)] = 0.1  # Adam learning rate on the generator's parameters
    # Image parameterisation (see core.generators). "auto": "decoder" with the teacher's paired decoder when it has
    # one (the benchmark's generator ablation: decoder 0.42, fourier 0.17 on val), else "fourier".
    generator: GeneratorName = "auto"
    decoder: Annotated[str | None, Field(min_length=1, max_length=100)] = None  # for "decoder"; None: the teacher's paired one
    # The decoder's latent prior: None or "fitted": its bundle's default; "standard": N(0, I); else a variant's name.
    prior: Annotated[str | None, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,40}$")] = None
    prior_weight: Annotated[float, Field(ge=0, le=100)] = 0.0  # pull of the codes toward the prior (its negative log-likelihood)
    init_candidates: Annotated[int | None, Field(ge=1, le=64)] = None  # prior starts per image; the teacher keeps the most class-like
    objective: InversionObjective = "matching"  # the method, or the DeepInversion (BatchNorm) baseline
    cutouts: Annotated[int | None, Field(ge=1, le=64)] = None  # random augmented crops per image per step
    use_styles: bool = True  # style dictionary diversification (SDD)
    class_consistency_weight: Annotated[float, Field(ge=0, le=100)] = 1.0  # CCM weight; 0 disables it
    batch_size: Annotated[int | None, Field(ge=1, le=4096)] = None  # images optimised together
    # Classes the prior covers thinly (core.coverage: the teacher's confidence in the prior samples most like the class,
    # below coverage_threshold) get this many inversion steps for their images when ``steps`` is 0; None: the budget's.
    thin_class_steps: Annotated[int | None, Field(ge=0, le=5000)] = None
    coverage_threshold: Annotated[float, Field(ge=0, le=1)] = 0.7  # prior coverage below which a class is thin
    coverage_samples: Annotated[int, Field(ge=64, le=8192)] = 1024  # prior samples decoded and scored to measure coverage
    # CCM's weight in the thin classes' inversion; None: the budget's (cpu: 0, measured: the cross-entropy term makes
    # images the teacher is sure of that teach the student least).
    thin_class_consistency_weight: Annotated[float | None, Field(ge=0, le=100)] = None
    # An image pool of the service (POST /v1/pools): the user's unlabelled images, distilled on beside the synthesized
    # ones (distillation.pool_share of each batch), part held out to measure the student's agreement with the teacher.
    pool: Annotated[str | None, Field(pattern=r"^pool_[0-9a-z]{26}$")] = None
    # With a pool and a decoder that ships its encoder: synthesis draws from a prior fitted on the codes of the pool's
    # images (those distilled on, not the held-out ones) instead of synthesis.prior: the user's domain, not the decoder's.
    pool_prior: bool = True
    # Augmented views of each pool image whose teacher embeddings are made once and kept with the pool (core.pools): a
    # job on the pool distils on them without running the teacher; more views, more variety, a longer first job.
    pool_views: Annotated[int, Field(ge=1, le=16)] = 4

    @model_validator(mode="after")
    def _pool_generator_needs_a_pool(self) -> SynthesisSpec:
        if self.generator == "pool" and self.pool is None:
            raise ValueError('generator "pool" draws the images of synthesis.pool: name a pool')
        return self


class DistillationSpec(Strict):
    method: DistillMethod | None = None  # student loss (METHOD.md stage 2); None: the budget's
    temperature: Annotated[float, Field(gt=0, le=100)] = 4.0  # KD softmax temperature T
    steps: Annotated[int | None, Field(ge=1, le=1_000_000)] = None  # student updates; None: epochs, else the budget's
    epochs: Annotated[int | None, Field(ge=1, le=1000)] = None  # passes over the surrogate set, when steps is not given
    warmup_epochs: Annotated[int, Field(ge=0, le=1000)] = 10  # plain KD epochs before meta-KD starts
    optimizer: Literal["sgd", "adam"] = "sgd"  # student optimiser (SGD: momentum 0.9, Nesterov)
    lr: Annotated[float, Field(gt=0, le=10)] = 0.05  # student learning rate, cosine-decayed
    inner_lr: Annotated[float, Field(gt=0, le=10)] = 0.01  # meta-KD inner step size alpha
    first_order: bool | None = None  # meta-KD without second-order terms (cheaper); None: the budget's
    # The method of a job whose prior covers some class thinly (core.coverage; chosen in the preparing stage, the same in
    # every process); None: the budget's. Meta-KD's held-out styles keep the student from the inverted images' quirks.
    thin_class_method: DistillMethod | None = None
    train_style_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5  # share of styles whose images form X_tr
    batch_size: Annotated[int, Field(ge=2, le=4096)] = 64
    mixup: Annotated[float, Field(ge=0, le=1)] = 0.0  # share of each batch mixed with another image (teacher-labelled)
    fresh_share: Annotated[float | None, Field(ge=0, lt=1)] = None  # share of each batch drawn fresh from the generator's prior
    # Share of each batch drawn from synthesis.pool's images (0 without a pool); None: the budget's. With fresh_share
    # it must leave room for the surrogate set's images.
    pool_share: Annotated[float | None, Field(ge=0, lt=1)] = None
    # Augmented views of each surrogate image made once with the teacher's logits (0: a new view and a teacher pass every
    # step); with a sample bank's fresh images a step then costs the student alone. None: the budget's.
    fixed_views: Annotated[int | None, Field(ge=0, le=64)] = None


def _known_student(name: str | None) -> str | None:
    if name is not None and name not in STUDENTS:
        known = student_names()
        context = {"arch": repr(name), "names": ", ".join(known), "known": known}
        raise PydanticCustomError("unknown_student", "unknown student {arch}; known: {names}", context)
    return name


def _student_names_schema(schema: dict[str, Any]) -> None:
    for option in schema.get("anyOf", []):  # the names registered when the schema is drawn
        if option.get("type") == "string":
            option["enum"] = student_names()


class StudentSpec(Strict):
    # Student architecture: an entry of core.student_catalog.STUDENTS; None: the budget's.
    arch: Annotated[str | None, AfterValidator(_known_student), Field(json_schema_extra=_student_names_schema)] = None
    image_size: Annotated[int | None, Field(ge=16, le=1024)] = None  # input size; None: the teacher's (cpu budget: at most 32)


class UnknownSpec(Strict):
    """The student's "none of these" answer, calibrated at export without real data (core.calibration)."""

    enabled: bool = True  # calibrate it; False: the model card says none was asked for and the export is faster
    false_accept_rate: Annotated[float, Field(gt=0, lt=0.5)] = 0.05  # share of out-of-class images the threshold lets through
    # Prior samples the teacher sorts into the job's classes and its vocabulary's other names; None: 4,096 from a sample
    # bank (already decoded and embedded), 1,024 decoded and embedded at export without one.
    candidates: Annotated[int | None, Field(ge=64, le=16384)] = None
    in_class_per_class: Annotated[int, Field(ge=2, le=256)] = 32  # held-out synthesized images per class for the temperature


class ExportSpec(Strict):
    formats: list[ExportFormat] = Field(default_factory=lambda: ["onnx", "torchscript"], min_length=1)
    opset: Annotated[int, Field(ge=17, le=23)] = 17  # ONNX opset
    unknown: UnknownSpec = Field(default_factory=UnknownSpec)


# What a spec's unset (None) fields become, by budget. "cpu": chosen on val renders for the bundled teacher on
# 2 CPU cores (bench/results/experiments.md, 2026-11-29): teacher-chosen starts from the decoder's kernel-density
# prior with no inversion steps (on this prior they measured no better with fresh images, and worse without),
# plain KD for 4,000 steps with half of each batch fresh prior samples, tiny_cnn (a ResNet-18 step costs about 50
# tiny_cnn steps on this CPU). "gpu": the paper's budget (400 inversion steps, 8 cutouts, 64 images per
# class, a ResNet-18 distilled for 60 epochs with meta-KD); not measured on our machines. Both: a class the prior covers
# thinly (core.coverage) gets inversion steps on the cpu budget (thin_class_steps) and the job distils with meta-KD
# (thin_class_method), chosen on val renders of classes a decoder never saw (bench/results/experiments.md, 2026-12-05).
BUDGETS: dict[str, dict[str, dict[str, object]]] = {
    "cpu": {
        "synthesis": {
            "images_per_class": 256,
            "steps": 0,
            "cutouts": 2,
            "batch_size": 256,
            "init_candidates": 4,
            "thin_class_steps": 30,
            "thin_class_consistency_weight": 0.0,
        },
        "distillation": {
            "method": "kd",
            "steps": 4000,
            "fresh_share": 0.5,
            "pool_share": 0.75,
            "thin_class_method": "meta_kd",
            "first_order": True,
            "fixed_views": 8,
        },
        "student": {"arch": "small_cnn"},
    },
    "gpu": {
        "synthesis": {
            "images_per_class": 64,
            "steps": 400,
            "cutouts": 8,
            "batch_size": 64,
            "init_candidates": 1,
            "thin_class_steps": 0,
            "thin_class_consistency_weight": 1.0,
        },
        "distillation": {
            "method": "meta_kd",
            "epochs": 60,
            "fresh_share": 0.0,
            "pool_share": 0.25,
            "thin_class_method": "meta_kd",
            "first_order": False,
            "fixed_views": 0,
        },
        "student": {"arch": "resnet18"},
    },
}
BudgetName = Literal["auto", "cpu", "gpu"]
# With an image pool the pool's images take the fresh prior samples' place: measured on shape8 val renders with 2,048
# unlabelled renders (bench/results/pools.md), pool 0.75 and no fresh samples 0.922 against pool 0.25 beside fresh 0.5
# 0.910 (the gpu budget's 0.25 is not measured).
POOL_FRESH_SHARE = 0.0


def unsupported_exports(arch: str, formats: list[str]) -> PydanticCustomError | None:
    """The error for export formats student ``arch`` does not export to (its entry's ``export_formats``), if any."""
    supported = student_entry(arch).export_formats
    missing = [f for f in formats if f not in supported]
    if not missing:
        return None
    context = {"arch": arch, "formats": ", ".join(missing), "supported": list(supported)}
    return PydanticCustomError("unsupported_export_format", "student {arch} does not export to {formats}", context)


class TeacherFacts(Protocol):
    """What resolving a spec needs to know of its teacher: core.teachers.Teacher has it, and so does the service's
    catalogue entry (service.catalog.TeacherEntry), which reads it from the teacher's folder without torch."""

    @property
    def name(self) -> str: ...

    @property
    def paired_decoder(self) -> str | None: ...


def generator_for(synthesis: SynthesisSpec, paired_decoder: str | None) -> tuple[str, str | None]:
    """The generator a job's synthesis uses and its decoder: "auto" is "decoder" with the spec's or the teacher's paired
    decoder when there is one, else "pool" when the job has an image pool (core.generators.pool_images), else "fourier"
    (which ``with_image_prior`` refuses unless asked for by name). ("decoder" without any decoder is the pipeline's error
    to raise.)"""
    decoder = synthesis.decoder or paired_decoder
    if synthesis.generator == "auto":
        if decoder:
            return "decoder", decoder
        return ("pool", None) if synthesis.pool else ("fourier", None)  # the user's images before any noise
    return synthesis.generator, decoder if synthesis.generator == "decoder" else None


# Generators without a learnt image prior: their images are noise to any teacher but a toy one, and a student distilled
# on them guesses (the benchmark's generator ablation, shape8: fourier 12.5 %, chance).
NOISE_GENERATORS = ("fourier", "pixel")


class NoImagePriorError(ValueError):
    """A job whose generator "auto" finds no decoder: it would synthesize noise and distil a student at chance."""

    code = "no_image_prior"


def noise_generator_warning(generator: str) -> str | None:
    """What a job asking for a generator without an image prior by name is told (in its 201, the job and its metrics)."""
    if generator not in NOISE_GENERATORS:
        return None
    return (
        f"generator {generator!r} has no image prior: its images are noise to a real teacher and the student may be "
        "near chance (the benchmark: 12.5 % on 8 classes); give a decoder for a useful student"
    )


def with_image_prior(synthesis: SynthesisSpec, teacher: TeacherFacts) -> SynthesisSpec:
    """``synthesis`` with the generator, decoder and prior it resolves to written out ("auto" made explicit: what a job
    says it uses), or NoImagePriorError when "auto" would fall back to noise: a teacher with no paired decoder and a
    spec naming none. The message says what to do instead. Applying it twice changes nothing."""
    generator, decoder = generator_for(synthesis, teacher.paired_decoder)
    if synthesis.generator == "auto" and generator in NOISE_GENERATORS:
        raise NoImagePriorError(
            f"teacher {teacher.name!r} has no paired decoder and the spec names none, so the synthesis would draw "
            f"{generator} noise and distil a student at chance. Give a decoder: `clipforge decoders pull taesd`, then "
            '"synthesis": {"decoder": "taesd"} (or one made with `clipforge decoders train`); or give unlabelled images '
            'of your domain as an image pool: "synthesis": {"pool": "pool_..."} (POST /v1/pools); or ask for '
            '"synthesis": {"generator": "fourier"} to run it anyway'
        )
    if generator != "decoder" or decoder is None:  # a named noise generator, or "decoder" with none (the pipeline's error)
        return synthesis.model_copy(update={"generator": generator})
    return synthesis.model_copy(update={"generator": generator, "decoder": decoder, "prior": synthesis.prior or "fitted"})


class CustomizeSpec(Strict):
    # None: the service's default teacher (its default_teacher setting; DEFAULT_TEACHER unless the operator sets
    # another), filled in at submission; see core.teachers.create_teacher for the names a teacher can have.
    teacher: Annotated[str | None, Field(min_length=1, max_length=300)] = None
    # Compute for the fields left None: "auto" is "gpu" when the job runs on CUDA, else "cpu" (see BUDGETS).
    budget: BudgetName = "auto"
    classes: Annotated[list[ClassSpec], Field(min_length=2, max_length=MAX_CLASSES)]
    # The style dictionary; None: the teacher's own (shapes-mini has one), else DEFAULT_STYLES.
    styles: Annotated[list[StyleText] | None, Field(min_length=1, max_length=MAX_STYLES)] = None
    constraint: Annotated[str | None, Field(max_length=MAX_CLASS_TEXT_CHARS)] = None  # appended to class texts, e.g. "a type of flower"
    synthesis: SynthesisSpec = Field(default_factory=SynthesisSpec)
    distillation: DistillationSpec = Field(default_factory=DistillationSpec)
    student: StudentSpec = Field(default_factory=StudentSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"

    @field_validator("classes", mode="before")
    @classmethod
    def _names_as_classes(cls, value: object) -> object:
        # The short form: a list of class names.
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> CustomizeSpec:
        seen: set[str] = set()
        for c in self.classes:
            key = c.name.casefold()
            if key in seen:
                raise ValueError(f"duplicate class name {c.name!r}")
            seen.add(key)
        return self

    @model_validator(mode="after")
    def _pool_share_needs_a_pool(self) -> CustomizeSpec:
        if self.distillation.pool_share and self.synthesis.pool is None:
            raise ValueError("distillation.pool_share draws from synthesis.pool: name a pool, or leave pool_share out")
        return self

    @model_validator(mode="after")
    def _exportable(self) -> CustomizeSpec:
        # A student the spec names is checked here, at submission; a budget's, when the spec is resolved.
        if self.student.arch is not None and (error := unsupported_exports(self.student.arch, self.export.formats)):
            raise error
        return self

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def budget_for(self, device_type: str) -> str:
        """The budget a job of this spec gets on a device of ``device_type`` ("cpu", "cuda", ...)."""
        if self.budget != "auto":
            return self.budget
        return "gpu" if device_type == "cuda" else "cpu"


class ResolvedSpec(CustomizeSpec):
    """A spec with its defaults filled in for where its job runs (``resolve``): ``budget`` is the one applied, the
    teacher is named, and every field the budget sets has a value. Resolving it again returns it unchanged."""

    teacher: Annotated[str, Field(min_length=1, max_length=300)]
    budget: Literal["cpu", "gpu"]


def resolve(spec: CustomizeSpec, device_type: str, teacher: TeacherFacts) -> ResolvedSpec:
    """``spec`` with its defaults filled in, the one place that does it: called once per job, by the worker with its
    loaded teacher (``core.pipeline`` when given an unresolved spec) and by the service's estimate with the catalogue's
    facts of the same teacher (service.specs), so both see the same job.

    - the budget: the spec's, or for "auto" "gpu" on ``device_type`` "cuda" and "cpu" otherwise; each field the spec
      left None takes the budget's value (a distillation given in epochs or in steps keeps that unit);
    - the teacher: the spec's, else ``teacher.name`` (a caller picks the teacher first: see DEFAULT_TEACHER);
    - the generator, decoder and prior are written out (``with_image_prior``): "auto" with no decoder for it is refused;
    - fresh images during distillation are prior samples of a decoder: a budget never asks for them from a generator
      without a learnt prior (Fourier or pixel noise), though a user may;
    - the budget's student must export to the spec's formats (a student the spec names was checked at validation).
    """
    if isinstance(spec, ResolvedSpec):
        return spec
    budget = spec.budget_for(device_type)
    fields: dict[str, Any] = {name: getattr(spec, name) for name in CustomizeSpec.model_fields}
    fields.update(budget=budget, teacher=spec.teacher or teacher.name, synthesis=with_image_prior(spec.synthesis, teacher))
    for section, defaults in BUDGETS[budget].items():
        current = fields[section]
        filled = {k: v for k, v in defaults.items() if getattr(current, k) is None}
        if section == "distillation" and current.epochs is not None:
            filled.pop("steps", None)  # the user's epochs decide the length
        if section == "distillation" and current.steps is not None:
            filled.pop("epochs", None)
        fields[section] = current.model_copy(update=filled)
    if spec.distillation.fresh_share is None and generator_for(spec.synthesis, teacher.paired_decoder)[0] != "decoder":
        fields["distillation"] = fields["distillation"].model_copy(update={"fresh_share": 0.0})
    if spec.synthesis.pool is None:  # no pool, nothing to draw from it
        fields["distillation"] = fields["distillation"].model_copy(update={"pool_share": 0.0})
    elif spec.distillation.fresh_share is None:  # the pool's images instead of fresh prior samples
        fields["distillation"] = fields["distillation"].model_copy(update={"fresh_share": POOL_FRESH_SHARE})
    shares = fields["distillation"].fresh_share + fields["distillation"].pool_share
    if shares >= 1:
        raise InvalidSharesError(f"distillation.fresh_share + pool_share is {shares:g}: they must leave room for synthesized images")
    if error := unsupported_exports(fields["student"].arch, spec.export.formats):
        raise UnsupportedExportError(str(error))
    return ResolvedSpec.model_validate(fields)


class InvalidSharesError(ValueError):
    """Fresh prior samples and pool images would fill every batch."""

    code = "invalid_spec"


class UnsupportedExportError(ValueError):
    """The budget's student cannot be exported to a format the spec asks for."""

    code = "unsupported_export_format"


def requested_device(spec_device: str, service_device: str) -> str:
    """Where a job is to run: the spec's device when it names one (cpu, cuda, cuda:N), else the service's setting
    (``device`` in service.settings, "auto" by default). core.devices.job_device turns it into a device or refuses it."""
    return spec_device if spec_device != "auto" else service_device


def device_type(device: str) -> str:
    """ "cuda" for cuda and cuda:N, else "cpu": for "auto" a process that cannot see the workers assumes the CPU budget."""
    return "cuda" if device.startswith("cuda") else "cpu"
