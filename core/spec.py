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
StudentName = Literal["resnet18", "mobilenet_v3_small", "tiny_cnn"]
ExportFormat = Literal["onnx", "torchscript"]


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
    images_per_class: Annotated[int, Field(ge=1, le=1024)] = 64  # surrogate images synthesized per class
    steps: Annotated[int, Field(ge=1, le=5000)] = 400  # optimisation steps per image batch
    lr: Annotated[float, Field(gt=0, le=10)] = 0.1  # Adam learning rate on the generator's parameters
    # Image parameterisation (see core.generators). "auto": "decoder" with the teacher's paired decoder when it has
    # one (the benchmark's generator ablation: decoder 0.42, fourier 0.17 on val), else "fourier".
    generator: GeneratorName = "auto"
    decoder: Annotated[str | None, Field(min_length=1, max_length=100)] = None  # for "decoder"; None: the teacher's paired one
    objective: InversionObjective = "matching"  # the method, or the DeepInversion (BatchNorm) baseline
    cutouts: Annotated[int, Field(ge=1, le=64)] = 8  # random augmented crops per image per step
    use_styles: bool = True  # style dictionary diversification (SDD)
    class_consistency_weight: Annotated[float, Field(ge=0, le=100)] = 1.0  # CCM weight; 0 disables it
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 64  # images optimised together


class DistillationSpec(Strict):
    method: DistillMethod = "meta_kd"  # student loss (METHOD.md stage 2)
    temperature: Annotated[float, Field(gt=0, le=100)] = 4.0  # KD softmax temperature T
    epochs: Annotated[int, Field(ge=1, le=1000)] = 60  # passes over the surrogate set
    warmup_epochs: Annotated[int, Field(ge=0, le=1000)] = 10  # plain KD epochs before meta-KD starts
    optimizer: Literal["sgd", "adam"] = "sgd"  # student optimiser (SGD: momentum 0.9, Nesterov)
    lr: Annotated[float, Field(gt=0, le=10)] = 0.05  # student learning rate, cosine-decayed
    inner_lr: Annotated[float, Field(gt=0, le=10)] = 0.01  # meta-KD inner step size alpha
    first_order: bool = False  # meta-KD without second-order terms (cheaper)
    train_style_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5  # share of styles whose images form X_tr
    batch_size: Annotated[int, Field(ge=2, le=4096)] = 64
    mixup: Annotated[float, Field(ge=0, le=1)] = 0.0  # share of each batch mixed with another image (teacher-labelled)


class StudentSpec(Strict):
    arch: StudentName = "resnet18"  # student architecture (see core.students)
    image_size: Annotated[int | None, Field(ge=16, le=1024)] = None  # input size; None: the teacher's


class ExportSpec(Strict):
    formats: list[ExportFormat] = Field(default_factory=lambda: ["onnx", "torchscript"], min_length=1)
    opset: Annotated[int, Field(ge=17, le=23)] = 17  # ONNX opset


class CustomizeSpec(Strict):
    teacher: Annotated[str, Field(min_length=1, max_length=300)] = "ViT-B-32/openai"  # see core.teachers.create_teacher
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
