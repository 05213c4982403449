"""Run benchmark rows on validation renders with budget overrides, for choosing settings.

    python -m bench.experiment --rows real_kd,inv_sdd_ccm --set images_per_class=16 --seeds 2

Prints one JSON line per (row, seed) and a summary; never looks at test renders.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields, replace

from bench.paper import BUDGETS, ROWS, PaperBenchmark
from core.teachers import create_teacher


def parse_overrides(items: list[str], budget_fields: set[str]) -> dict[str, object]:
    overrides: dict[str, object] = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in budget_fields:
            raise SystemExit(f"unknown budget field {key!r}; known: {sorted(budget_fields)}")
        overrides[key] = value if not value.lstrip("-").replace(".", "", 1).isdigit() else (float(value) if "." in value else int(value))
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="budget override")
    parser.add_argument("--synthesis", default="{}", help="JSON spec synthesis overrides applied to every row (core.spec.SynthesisSpec)")
    parser.add_argument("--distill", default="{}", help="JSON spec distillation overrides (core.spec.DistillationSpec)")
    parser.add_argument("--base", default="full", choices=sorted(BUDGETS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--label", default="")
    args = parser.parse_args()

    base = BUDGETS[args.base]
    scalar_fields = {f.name for f in fields(base)} - {"synthesis", "distillation"}
    synthesis_overrides, distill_overrides = json.loads(args.synthesis), json.loads(args.distill)
    budget = replace(
        base,
        **parse_overrides(args.set, scalar_fields),
        synthesis={**base.synthesis, **synthesis_overrides},
        distillation={**base.distillation, **distill_overrides},
    )
    known = {row.key: row for row in ROWS}
    rows = [known[k] for k in args.rows.split(",")]
    teacher = create_teacher("shapes-mini", device="auto")
    bench = PaperBenchmark(teacher, budget, split="val", log=lambda line: print(line, file=sys.stderr, flush=True))
    start = time.monotonic()
    report = bench.run(args.seeds, tuple(rows))
    summary = {
        "label": args.label,
        "budget": report["budget"],
        "synthesis": synthesis_overrides,
        "distill": distill_overrides,
        "seconds": round(time.monotonic() - start),
        "val": {r["key"]: [round(r["mean"], 4), round(r["std"], 4)] for r in report["rows"] if r["mean"] is not None},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
