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
    for key in set(defaults) - {"classes"}:
        assert example[key] == defaults[key], key
    # The spec's null teacher is the service's default, which the text under the example names.
    assert f"the service's default teacher, `{Settings(_env_file=None).default_teacher}`" in block  # type: ignore[call-arg]


def test_the_teacher_table_names_the_services_default():
    line = next(line for line in README.splitlines() if "the service's default" in line)
    assert f"`{Settings(_env_file=None).default_teacher}`" in line  # type: ignore[call-arg]


def test_the_budget_table_matches_the_cpu_budget():
    cpu = BUDGETS["cpu"]
    row = next(line for line in README.splitlines() if line.startswith("| `cpu` |"))
    assert f"{cpu['synthesis']['images_per_class']} images per class" in row
    assert f"{cpu['distillation']['steps']:,} steps" in row and f"`{cpu['student']['arch']}`" in row


# How the README's first paragraph names each distillation method (a method that is not here fails the test below).
METHOD_WORDS = {
    "kd": "plain knowledge distillation",
    "ce": "cross-entropy on the teacher's labels",
    "ce_kd": "cross-entropy and knowledge distillation",
    "meta_kd": "meta knowledge distillation",
    "meta_ce_kd": "meta knowledge distillation with cross-entropy",
}


def test_the_first_paragraph_names_each_budgets_student_and_method():
    """The README's opening says, for every budget in BUDGETS, which student it distils and how; read from BUDGETS,
    so that a changed default (a student, a method, a budget) fails here until the opening says it."""
    first = " ".join(README.split("\n\n")[1].split())  # the paragraph under the title, on one line
    named = re.findall(r"the `(\w+)` budget's student is `(\w+)`, distilled with ([^(]+?) \(`(\w+)`\)", first)
    assert {budget for budget, *_ in named} == set(BUDGETS), first
    for budget, student, words, method in named:
        assert student == BUDGETS[budget]["student"]["arch"], budget
        assert method == BUDGETS[budget]["distillation"]["method"], budget
        assert words == METHOD_WORDS[method], budget
    assert "ResNet-18 by default" not in first


def test_the_benchmarks_bounds_bound_what_they_claim_to():
    """A committed benchmark row called an upper (lower) bound scores at least (at most) every student row of its table:
    a supervised row trained for fewer steps than the rows it is set beside is named for what it is instead."""
    report = json.loads((REPO / "bench" / "results" / "paper.json").read_text())
    students = [row for row in report["rows"] if row["kind"] != "teacher" and row["mean"] is not None]
    bounds = [row for row in students if "bound)" in row["label"]]
    assert bounds  # the lower bound (noise + KD) at least
    for bound in bounds:
        table = [row["mean"] for row in students if row["table"] == bound["table"]]
        assert bound["mean"] == (max(table) if "upper bound" in bound["label"] else min(table)), bound["label"]
