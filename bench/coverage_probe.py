"""The prior coverage of each class (core.coverage) for a teacher, classes and decoders, with no labelled image:

    python -m bench.coverage_probe shapes-mini circle,square,triangle,star,hexagon,cross,heart,ring - runs/decoders/shapes-vae-seen5

``-`` is the teacher's paired decoder; any other argument a decoder's name or folder (its default prior).
"""

from __future__ import annotations

import sys

from core.pipeline import prepare
from core.spec import CustomizeSpec
from core.teachers import create_teacher


def main() -> None:
    teacher_name, classes, decoders = sys.argv[1], sys.argv[2].split(","), sys.argv[3:] or ["-"]
    teacher = create_teacher(teacher_name, device="cpu")
    for decoder in decoders:
        synthesis = {} if decoder == "-" else {"synthesis": {"decoder": decoder}}
        preparation = prepare(CustomizeSpec.model_validate({"teacher": teacher_name, "classes": classes, "seed": 0, **synthesis}), teacher)
        coverage = preparation.coverage
        print(
            decoder,
            {name: round(p, 3) for name, p in zip(classes, coverage.prior, strict=True)},
            "thin:",
            [classes[k] for k in coverage.thin],
        )


if __name__ == "__main__":
    main()
