from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from core.registry import UnknownNameError
from core.spec import BUDGETS
from core.student_catalog import EXPORT_FORMATS, student_entry
from core.students import STUDENTS, Student, count_flops, count_parameters, create_student

MEAN = (0.48, 0.46, 0.41)
STD = (0.27, 0.26, 0.28)
ARCHS = ("resnet18", "mobilenet_v3_small", "tiny_cnn", "small_cnn")


def make(arch: str, num_classes: int = 5, image_size: int = 32) -> Student:
    torch.manual_seed(0)
    return create_student(arch, num_classes, image_size, mean=MEAN, std=STD)


def test_registry_names_match_the_spec() -> None:
    assert set(STUDENTS.names()) == set(ARCHS)


def test_the_student_catalogue_does_not_import_torch() -> None:
    code = "import sys, core.student_catalog; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_an_entrys_size_facts_are_the_models(arch: str) -> None:
    entry, student = student_entry(arch), make(arch, num_classes=10)
    assert entry.parameters == count_parameters(student)
    assert entry.mflops == pytest.approx(count_flops(student, 32) / 1e6, rel=0.01)


@pytest.mark.parametrize("arch", ARCHS)
def test_an_entrys_export_formats_export(arch: str) -> None:
    from core.export import export_onnx, export_openvino, export_tflite, export_torchscript, quantize_onnx_int8

    student = make(arch).eval()
    formats = student_entry(arch).export_formats
    onnx_bytes = export_onnx(student, 32) if {"onnx", "onnx_int8", "openvino", "tflite"} & set(formats) else None
    if "torchscript" in formats:
        export_torchscript(student, 32)
    if "onnx_int8" in formats:
        # Exportable is the fact; how closely INT8 follows fp32 depends on the trained weights (the job checks that).
        quantize_onnx_int8(onnx_bytes, torch.rand(16, 3, 32, 32).numpy(), max_disagreement=1.0)
    checked = torch.rand(256, 3, 32, 32).numpy()
    parities = []  # each within 1e-4 of the ONNX file's logits and the same top-1 on 256 images, or it raises
    if "openvino" in formats:
        parities.append(export_openvino(onnx_bytes, checked)[2])
    if "tflite" in formats:
        parities.append(export_tflite(student, 32, onnx_bytes, checked)[1])
    for parity in parities:
        assert parity["images"] == 256 and parity["max_abs_logit_difference"] <= 1e-4 and parity["top1_agreement"] == 1.0


def test_the_budgets_students_export_to_every_format() -> None:
    # A budget's student is not checked against the spec's formats at submission (the budget is chosen on the worker).
    for budget in BUDGETS.values():
        assert set(student_entry(str(budget["student"]["arch"])).export_formats) == set(EXPORT_FORMATS)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("image_size", [32, 64])
def test_logits_shape(arch: str, image_size: int) -> None:
    student = make(arch, num_classes=7, image_size=image_size).eval()
    with torch.no_grad():
        logits = student(torch.rand(2, 3, image_size, image_size))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    assert (student.arch, student.num_classes, student.image_size) == (arch, 7, image_size)


def test_normalisation_is_inside_the_student() -> None:
    student = make("tiny_cnn").eval()
    assert student.mean_values == MEAN and student.std_values == STD
    assert student.mean.shape == student.std.shape == (1, 3, 1, 1)
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = student.backbone((pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))
        assert torch.allclose(student(pixels), expected, atol=1e-6)
    assert "mean" in student.state_dict()  # a checkpoint carries its normalisation


def test_resnet18_small_stem_only_for_small_inputs() -> None:
    small, large = make("resnet18", image_size=32).backbone, make("resnet18", image_size=224).backbone
    assert small.conv1.stride == (1, 1) and small.conv1.kernel_size == (3, 3) and small.conv1.bias is None
    assert isinstance(small.maxpool, nn.Identity)
    assert large.conv1.stride == (2, 2) and large.conv1.kernel_size == (7, 7)
    assert isinstance(large.maxpool, nn.MaxPool2d)


def test_mobilenet_first_conv_stride() -> None:
    assert make("mobilenet_v3_small", image_size=32).backbone.features[0][0].stride == (1, 1)
    assert make("mobilenet_v3_small", image_size=224).backbone.features[0][0].stride == (2, 2)


def test_sizes_and_costs() -> None:
    tiny, resnet = make("tiny_cnn"), make("resnet18")
    tiny_params, resnet_params = count_parameters(tiny), count_parameters(resnet)
    assert 50_000 < tiny_params < 200_000  # "~100k parameters"
    assert resnet_params > tiny_params > 0
    tiny_flops, resnet_flops = count_flops(tiny, 32), count_flops(resnet, 32)
    assert resnet_flops > tiny_flops > 0


def test_count_flops_restores_modes_and_statistics() -> None:
    student = make("tiny_cnn").train()
    student.backbone.features[1].eval()  # a frozen BatchNorm must stay frozen
    bn = student.backbone.features[4]
    running_mean = bn.running_mean.clone()
    count_flops(student, 32)
    assert student.training and bn.training and not student.backbone.features[1].training
    assert torch.equal(bn.running_mean, running_mean)


def test_flops_match_a_hand_count() -> None:
    # One 1x1 conv plus a linear head: 2 * MACs, so the count is checked, not just positive.
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.Flatten(), nn.Linear(4 * 8 * 8, 2, bias=False))
    assert count_flops(model, 8) == 2 * (3 * 4 * 8 * 8 + 4 * 8 * 8 * 2)


def test_count_flops_follows_the_model_dtype() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, 2, bias=False)).to(torch.bfloat16)
    assert count_flops(model, 2) == 2 * 3 * 2 * 2 * 2


def test_unknown_name() -> None:
    with pytest.raises(UnknownNameError) as info:
        create_student("vit_huge", 3, 32, mean=MEAN, std=STD)
    assert info.value.code == "unknown_student"
    assert "tiny_cnn" in str(info.value)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        create_student("tiny_cnn", 0, 32, mean=MEAN, std=STD)
    with pytest.raises(ValueError):
        create_student("tiny_cnn", 3, 32, mean=MEAN, std=(0.2, 0.0, 0.2))
