"""The README's reference parts are checked against the code: error codes, the spec's defaults, teachers, budgets."""

from __future__ import annotations

import json
import re
from pathlib import Path

from core.spec import BUDGETS, CustomizeSpec
from service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
# Where the API and the service name an error code.
CODE_PATTERNS = [
    r'(?:invalid|ServiceError|error_response|_unauthorized|WebhookError)\(\s*(?:\d+,\s*)?"([a-z][a-z_]+)"',
    r'^\s+code = "([a-z_]+)"',
    r'^\s+\d{3}: "([a-z_]+)",',  # the framework's codes by status (api/errors.py)
]


def codes_in_code() -> set[str]:
    codes: set[str] = set()
    for folder in ("api", "service"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            for pattern in CODE_PATTERNS:
                codes |= set(re.findall(pattern, text, re.MULTILINE))
    return codes


def readme_section(title: str) -> str:
    start = README.index(title)
    return README[start : README.index("\n#", start + len(title))]


def test_every_error_code_is_in_the_readme_and_the_readme_names_no_other():
    codes = codes_in_code()
    assert len(codes) > 40  # the scan found the codes
    assert sorted(c for c in codes if f"`{c}`" not in README) == []
    table = README[README.index("| status | codes |") : README.index("The command line's own:")]
    listed = set(re.findall(r"`([a-z][a-z_]+)`", table)) - {"next_after", "loc", "range", "retry-after"}
    assert sorted(listed - codes) == []


def test_the_spec_example_holds_every_field_with_its_default():
    block = README[README.index("the JSON form is") :]
    example = json.loads(block[block.index("```json") + len("```json") : block.index("```", block.index("```json") + 7)])
    defaults = CustomizeSpec(classes=["a", "b"]).model_dump(mode="json")
    assert set(example) == set(defaults)
    for key in set(defaults) - {"classes", "teacher"}:
        assert example[key] == defaults[key], key
    assert example["teacher"] == Settings(_env_file=None).default_teacher  # type: ignore[call-arg]


def test_the_teacher_table_names_the_services_default():
    line = next(line for line in README.splitlines() if "the service's default" in line)
    assert f"`{Settings(_env_file=None).default_teacher}`" in line  # type: ignore[call-arg]


def test_the_budget_table_matches_the_cpu_budget():
    cpu = BUDGETS["cpu"]
    row = next(line for line in README.splitlines() if line.startswith("| `cpu` |"))
    assert f"{cpu['synthesis']['images_per_class']} images per class" in row
    assert f"{cpu['distillation']['steps']:,} steps" in row and f"`{cpu['student']['arch']}`" in row
