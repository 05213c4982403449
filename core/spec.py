"""The customization job spec: a torch-free pydantic model shared by the engine, the CLI and the API.

Importing this module must never import torch: the API process validates specs with it.
Every field has a default, so ``{"classes": ["cat", "dog"]}`` is a complete spec.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_CLASSES = 1000
MAX_CLASS_TEXT_CHARS = 300
MAX_STYLES = 64
MAX_STYLE_CHARS = 100

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

DistillMethod = Literal["ce", "kd", "ce_kd", "meta_kd", "meta_ce_kd"]
GeneratorName = Literal["auto", "fourier", "pixel", "decoder"]
InversionObjective = Literal["matching", "bn_inversion"]
StudentName = Literal["resnet18", "mobilenet_v3_small", "tiny_cnn", "small_cnn"]
ExportFormat = Literal["onnx", "torchscript", "onnx_int8"]  # onnx_int8: statically quantized, calibrated on synthesized images


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


class DistillationSpec(Strict):
    method: DistillMethod | None = None  # student loss (METHOD.md stage 2); None: the budget's
    temperature: Annotated[float, Field(gt=0, le=100)] = 4.0  # KD softmax temperature T
    steps: Annotated[int | None, Field(ge=1, le=1_000_000)] = None  # student updates; None: epochs, else the budget's
    epochs: Annotated[int | None, Field(ge=1, le=1000)] = None  # passes over the surrogate set, when steps is not given
    warmup_epochs: Annotated[int, Field(ge=0, le=1000)] = 10  # plain KD epochs before meta-KD starts
    optimizer: Literal["sgd", "adam"] = "sgd"  # student optimiser (SGD: momentum 0.9, Nesterov)
    lr: Annotated[float, Field(gt=0, le=10)] = 0.05  # student learning rate, cosine-decayed
    inner_lr: Annotated[float, Field(gt=0, le=10)] = 0.01  # meta-KD inner step size alpha
    first_order: bool = False  # meta-KD without second-order terms (cheaper)
    train_style_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5  # share of styles whose images form X_tr
    batch_size: Annotated[int, Field(ge=2, le=4096)] = 64
    mixup: Annotated[float, Field(ge=0, le=1)] = 0.0  # share of each batch mixed with another image (teacher-labelled)
    fresh_share: Annotated[float | None, Field(ge=0, lt=1)] = None  # share of each batch drawn fresh from the generator's prior


class StudentSpec(Strict):
    arch: StudentName | None = None  # student architecture (see core.students); None: the budget's
    image_size: Annotated[int | None, Field(ge=16, le=1024)] = None  # input size; None: the teacher's


class ExportSpec(Strict):
    formats: list[ExportFormat] = Field(default_factory=lambda: ["onnx", "torchscript"], min_length=1)
    opset: Annotated[int, Field(ge=17, le=23)] = 17  # ONNX opset


# What a spec's unset (None) fields become, by budget. "cpu": chosen on val renders for the bundled teacher on
# 2 CPU cores (bench/results/experiments.md, 2026-11-29): teacher-chosen starts from the decoder's kernel-density
# prior with no inversion steps (on this prior they measured no better with fresh images, and worse without),
# plain KD for 4,000 steps with half of each batch fresh prior samples, tiny_cnn (a ResNet-18 step costs about 50
# tiny_cnn steps on this CPU). "gpu": the paper's budget (400 inversion steps, 8 cutouts, 64 images per
# class, a ResNet-18 distilled for 60 epochs with meta-KD); not measured on our machines.
BUDGETS: dict[str, dict[str, dict[str, object]]] = {
    "cpu": {
        "synthesis": {"images_per_class": 256, "steps": 0, "cutouts": 2, "batch_size": 256, "init_candidates": 4},
        "distillation": {"method": "kd", "steps": 4000, "fresh_share": 0.5},
        "student": {"arch": "tiny_cnn"},
    },
    "gpu": {
        "synthesis": {"images_per_class": 64, "steps": 400, "cutouts": 8, "batch_size": 64, "init_candidates": 1},
        "distillation": {"method": "meta_kd", "epochs": 60, "fresh_share": 0.0},
        "student": {"arch": "resnet18"},
    },
}
BudgetName = Literal["auto", "cpu", "gpu"]


class CustomizeSpec(Strict):
    teacher: Annotated[str, Field(min_length=1, max_length=300)] = "ViT-B-32/openai"  # see core.teachers.create_teacher
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

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def budget_for(self, device_type: str) -> str:
        """The budget a job of this spec gets on a device of ``device_type`` ("cpu", "cuda", ...)."""
        if self.budget != "auto":
            return self.budget
        return "gpu" if device_type == "cuda" else "cpu"

    def resolved(self, device_type: str) -> CustomizeSpec:
        """This spec with every unset field taken from its budget on ``device_type``; ``budget`` names it."""
        budget = self.budget_for(device_type)
        update: dict[str, object] = {"budget": budget}
        for section, defaults in BUDGETS[budget].items():
            current = getattr(self, section)
            filled = {k: v for k, v in defaults.items() if getattr(current, k) is None}
            if section == "distillation" and current.epochs is not None:
                filled.pop("steps", None)  # the user's epochs decide the length
            if section == "distillation" and current.steps is not None:
                filled.pop("epochs", None)
            update[section] = current.model_copy(update=filled)
        return self.model_copy(update=update)
