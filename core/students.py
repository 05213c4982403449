"""Student classifiers: small backbones that learn from the CLIP teacher and are exported for deployment.

A student takes RGB pixels in [0, 1], shape (N, 3, S, S), and returns logits (N, K). It applies the
normalisation itself (buffers ``mean``/``std``), so exported ONNX/TorchScript models take plain pixels
and a caller never has to know which statistics the student was trained with.

The architectures are entries of ``STUDENTS`` (core.student_catalog: torch-free, with each one's description, cost and
export facts); an entry names one of the ``build_*`` functions below, which takes ``(num_classes, image_size)`` and
returns a randomly initialised ``nn.Module`` mapping normalised pixels to logits. ``create_student`` wraps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision import models

from core.student_catalog import STUDENTS

if TYPE_CHECKING:
    from core.teachers import Teacher

# Inputs at or below this size get a stem that does not downsample at once: ImageNet stems divide the
# input by 4 (resnet) or 2 (mobilenet) in the first layer, which leaves a 32 px image almost no
# spatial resolution for the later stages (the CIFAR practice).
SMALL_INPUT_MAX = 64

RGB_CHANNELS = 3

# tiny_cnn: channel widths of its conv-BN-ReLU blocks; every block after the first halves the
# resolution. With 3x3 kernels this is ~98k conv/BN parameters plus 129 per class in the head.
TINY_CNN_WIDTHS: tuple[int, ...] = (16, 32, 64, 128)
TINY_CNN_KERNEL = 3
# small_cnn: tiny_cnn plus this many residual conv-BN-ReLU layers after each block. Only the two lowest
# resolutions get them, where a 3x3 conv is cheapest (8x8 and 4x4 at 32 px): about twice tiny_cnn's FLOPs.
SMALL_CNN_EXTRA_LAYERS: tuple[int, ...] = (0, 0, 1, 1)


class Student(nn.Module):
    """A backbone behind the student contract: [0, 1] pixels in, logits out.

    Attributes: ``arch`` (the registry name), ``num_classes``, ``image_size``, the buffers ``mean`` and
    ``std`` of shape (1, 3, 1, 1), and the same values as plain tuples in ``mean_values``/``std_values``.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        arch: str,
        backbone: nn.Module,
        *,
        num_classes: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        if len(mean) != RGB_CHANNELS or len(std) != RGB_CHANNELS:
            raise ValueError(f"mean and std need {RGB_CHANNELS} values (RGB); got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be positive; got {tuple(std)}")
        self.arch = arch
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.mean_values: tuple[float, ...] = tuple(float(m) for m in mean)
        self.std_values: tuple[float, ...] = tuple(float(s) for s in std)
        self.backbone = backbone
        # Persistent buffers: a saved state_dict then reproduces the student exactly, normalisation included.
        self.register_buffer("mean", torch.tensor(self.mean_values, dtype=torch.float32).view(1, RGB_CHANNELS, 1, 1))
        self.register_buffer("std", torch.tensor(self.std_values, dtype=torch.float32).view(1, RGB_CHANNELS, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone((pixels - self.mean) / self.std)

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, num_classes={self.num_classes}, image_size={self.image_size}"


def create_student(name: str, num_classes: int, image_size: int, *, mean: Sequence[float], std: Sequence[float]) -> Student:
    """A randomly initialised student ``name`` (see ``STUDENTS.names()``) for ``num_classes`` at ``image_size`` px."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1; got {num_classes}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive; got {image_size}")
    backbone = STUDENTS.create(name, num_classes=num_classes, image_size=image_size)
    return Student(name, backbone, num_classes=num_classes, image_size=image_size, mean=mean, std=std)


def create_student_for(teacher: Teacher, name: str, num_classes: int, image_size: int | None = None) -> Student:
    """A student ``name`` that normalises its pixels as ``teacher`` does (by default at its resolution), on its device."""
    mean, std = teacher.mean.flatten().tolist(), teacher.std.flatten().tolist()
    return create_student(name, num_classes, image_size or teacher.image_size, mean=mean, std=std).to(teacher.device)


def build_resnet18(num_classes: int, image_size: int) -> nn.Module:
    model = models.resnet18(weights=None, num_classes=num_classes)
    if image_size <= SMALL_INPUT_MAX:
        # CIFAR-style stem: a 3x3 stride-1 conv and no max pool keep full resolution into layer1.
        model.conv1 = nn.Conv2d(RGB_CHANNELS, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision inits its convs
        model.maxpool = nn.Identity()
    return model


def build_mobilenet_v3_small(num_classes: int, image_size: int) -> nn.Module:
    model = models.mobilenet_v3_small(weights=None, num_classes=num_classes)
    if image_size <= SMALL_INPUT_MAX:
        # Only the stride changes; the 3x3 kernel and its padding of 1 keep the size at stride 1.
        first_conv = model.features[0][0]
        assert isinstance(first_conv, nn.Conv2d)
        first_conv.stride = (1, 1)
    return model


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm that follows has its own shift.
    conv = nn.Conv2d(in_channels, out_channels, TINY_CNN_KERNEL, stride=stride, padding=TINY_CNN_KERNEL // 2, bias=False)
    return [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class Residual(nn.Module):
    """``x + layer(x)``: extra depth whose skip path keeps the gradients of the blocks before it flowing."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer(x)


class TinyCNN(nn.Module):
    """A ~100k-parameter CNN: conv-BN-ReLU blocks (stride-2 after the first), global average pool, linear head;
    ``extra_layers[i]`` residual conv-BN-ReLU layers after block ``i`` (none in tiny_cnn)."""

    def __init__(
        self, num_classes: int, image_size: int, widths: Sequence[int] = TINY_CNN_WIDTHS, extra_layers: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        extra_layers = extra_layers or [0] * len(widths)
        if len(extra_layers) != len(widths):
            raise ValueError("extra_layers needs one count per block")
        # Small inputs keep full resolution in the first block; larger ones halve it there too.
        first_stride = 1 if image_size <= SMALL_INPUT_MAX else 2
        layers: list[nn.Module] = []
        in_channels = RGB_CHANNELS
        for i, (width, extra) in enumerate(zip(widths, extra_layers, strict=True)):
            layers += _conv_bn_relu(in_channels, width, first_stride if i == 0 else 2)
            layers += [Residual(nn.Sequential(*_conv_bn_relu(width, width, 1))) for _ in range(extra)]
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def build_tiny_cnn(num_classes: int, image_size: int) -> nn.Module:
    return TinyCNN(num_classes, image_size)


def build_small_cnn(num_classes: int, image_size: int) -> nn.Module:
    return TinyCNN(num_classes, image_size, extra_layers=SMALL_CNN_EXTRA_LAYERS)


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or not (buffers such as BatchNorm statistics are not parameters)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, image_size: int) -> int:
    """FLOPs of one forward pass on one image: multiply-accumulates counted as 2, as FlopCounterMode does.

    Runs in eval mode on the model's own device (restoring the caller's mode afterwards), so BatchNorm
    uses its running statistics and no statistics are updated.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    # Match a half-precision model's dtype, or its first layer would reject a float32 input.
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    # Per-module modes: a caller may keep some submodules (say, frozen BatchNorms) in eval while training.
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, RGB_CHANNELS, image_size, image_size, device=device, dtype=dtype))
    finally:
        for module, training in modes.items():
            module.training = training
    return int(counter.get_total_flops())
