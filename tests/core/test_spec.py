import subprocess
import sys

import pytest
from pydantic import ValidationError

from core.spec import DEFAULT_STYLES, CustomizeSpec


def test_the_simplest_body_is_a_complete_spec():
    spec = CustomizeSpec.model_validate({"classes": ["cat", "dog"]})
    assert spec.class_names == ["cat", "dog"]
    assert spec.classes[0].prompt_text == "cat"
    assert spec.synthesis.images_per_class == 64 and spec.synthesis.steps == 400 and spec.synthesis.lr == 0.1
    assert spec.synthesis.class_consistency_weight == 1.0
    assert spec.distillation.method == "meta_kd" and spec.student.arch == "resnet18"
    assert spec.export.formats == ["onnx", "torchscript"] and spec.export.opset >= 17
    assert len(DEFAULT_STYLES) == 16


def test_text_and_images_combine_and_images_alone_have_no_text():
    spec = CustomizeSpec.model_validate(
        {"classes": [{"name": "a", "text": "a red thing", "images": ["u1"]}, {"name": "b", "images": ["u2", "u3"]}]}
    )
    assert spec.classes[0].prompt_text == "a red thing" and spec.classes[0].images == ["u1"]
    assert spec.classes[1].prompt_text is None


@pytest.mark.parametrize(
    "body",
    [
        {"classes": ["only-one"]},
        {"classes": ["cat", "Cat"]},
        {"classes": ["cat", "  cat  "]},
        {"classes": ["cat", "   "]},
        {"classes": ["cat", "do\x00g"]},
        {"classes": ["cat", "x" * 1000]},
        {"classes": ["cat", "dog"], "unknown_field": 1},
        {"classes": ["cat", "dog"], "distillation": {"method": "magic"}},
        {"classes": ["cat", "dog"], "device": "tpu"},
        {"classes": ["cat", "dog"], "synthesis": {"steps": 0}},
        {"classes": [f"c{i}" for i in range(1001)]},
    ],
)
def test_bad_specs_are_rejected(body):
    with pytest.raises(ValidationError):
        CustomizeSpec.model_validate(body)


def test_spec_module_does_not_import_torch():
    code = "import sys, core.spec; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
