"""`clipforge bench paper`: the paper's tables reproduced on the shapes world.

Rows (each over several seeds, mean and standard deviation):
- Table 1, inversion ablation on `shape8`: baseline, +SDD, +CCM, SDD+CCM (all meta-KD);
- Table 1, distillation ablation on the SDD+CCM surrogate set: CE, KD, CE+KD, meta CE+KD, meta KD;
- the BatchNorm finding: DeepInversion-style BN inversion against the method;
- Table 6 on `ambiguous`: text, + a constraint phrase, + image prompts;
- the generator ablation: fourier, pixel, decoder;
- references: teacher zero-shot, noise images + KD (lower bound), real images + KD with the same
  student and budget, real images supervised (upper bound).
Students are evaluated on held-out real test renders; nothing here looks at test images to
choose a setting (that is done on validation renders, see bench/results/experiments.md).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from bench.evaluate import zero_shot
from bench.tasks import Split, Task, get_task
from core.distill import DistillConfig, Distiller
from core.students import Student, count_flops, count_parameters, create_student_for
from core.synthesis import ClassPrompts, SurrogateSet, SynthesisConfig, build_targets, synthesize
from core.teachers.base import Teacher

CONSTRAINT_PHRASE = "a kind of shape"  # Table 6's "+ a constraint phrase"
EXAMPLES_PER_CLASS = 4  # Table 6's "+ image prompts"


@dataclass(frozen=True)
class Budget:
    """Compute per row; the same for the method and the real-image references."""

    images_per_class: int  # surrogate (and real reference) images per class
    synth_steps: int
    cutouts: int
    synth_batch: int
    epochs: int
    warmup_epochs: int
    distill_batch: int
    student: str
    eval_images: int  # test renders per evaluation
    generator: str = "fourier"


BUDGETS = {
    # Sized so that the whole run (10 syntheses and 20 distillations per seed, 3 seeds) fits in 60 minutes on
    # 2 CPU cores; the paper's 64 images per class, far fewer steps (see bench/results/experiments.md).
    "full": Budget(
        images_per_class=64,
        synth_steps=10,
        cutouts=1,
        synth_batch=256,
        epochs=32,
        warmup_epochs=6,
        distill_batch=64,
        student="tiny_cnn",
        eval_images=1000,
        generator="decoder",
    ),
    "quick": Budget(
        images_per_class=8,
        synth_steps=20,
        cutouts=2,
        synth_batch=64,
        epochs=10,
        warmup_epochs=2,
        distill_batch=32,
        student="tiny_cnn",
        eval_images=500,
        generator="decoder",
    ),
}


@dataclass(frozen=True)
class Row:
    key: str
    table: str
    label: str
    task: str = "shape8"
    kind: str = "method"  # method | teacher | noise | real_kd | real_supervised
    synthesis: dict[str, object] = field(default_factory=dict)  # SynthesisConfig overrides
    method: str = "meta_kd"
    prompts: str = "text"  # text | constraint | text+images
    paper: float | None = None  # the paper's number (%), where it has one


ROWS: tuple[Row, ...] = (
    Row("teacher_shape8", "references", "CLIP teacher, zero-shot", kind="teacher", paper=85.65),
    Row("noise_kd", "references", "noise images + KD (lower bound)", kind="noise", method="kd"),
    Row("real_kd", "references", "real images + KD (same student and budget)", kind="real_kd", method="kd"),
    Row("real_supervised", "references", "real images, supervised (upper bound)", kind="real_supervised", method="ce"),
    Row(
        "inv_baseline",
        "table1_inversion",
        "inversion baseline",
        synthesis={"use_styles": False, "class_consistency_weight": 0.0},
        paper=60.61,
    ),
    Row("inv_sdd", "table1_inversion", "+ SDD", synthesis={"use_styles": True, "class_consistency_weight": 0.0}, paper=64.22),
    Row("inv_ccm", "table1_inversion", "+ CCM", synthesis={"use_styles": False, "class_consistency_weight": 1.0}, paper=60.35),
    Row("inv_sdd_ccm", "table1_inversion", "SDD + CCM (full method)", paper=64.81),
    Row("dist_ce", "table1_distillation", "L_CE", method="ce", paper=57.79),
    Row("dist_kd", "table1_distillation", "L_KD", method="kd", paper=63.58),
    Row("dist_ce_kd", "table1_distillation", "L_CE + L_KD", method="ce_kd", paper=62.35),
    Row("dist_meta_ce_kd", "table1_distillation", "meta L_CE + L_KD", method="meta_ce_kd", paper=63.89),
    Row("dist_meta_kd", "table1_distillation", "meta L_KD", paper=64.81),
    Row(
        "bn_inversion",
        "batchnorm",
        "BN inversion (DeepInversion) + KD",
        synthesis={"objective": "bn_inversion", "generator": "pixel"},
        method="kd",
        paper=7.0,
    ),
    Row("method_vs_bn", "batchnorm", "ours (SDD + CCM, meta KD)", paper=64.81),
    Row("teacher_ambiguous", "table6", "CLIP teacher, zero-shot", task="ambiguous", kind="teacher"),
    Row("t6_text", "table6", "text prompt", task="ambiguous", paper=15.83),
    Row("t6_constraint", "table6", "+ a constraint phrase", task="ambiguous", prompts="constraint", paper=18.07),
    Row("t6_images", "table6", "+ image prompts", task="ambiguous", prompts="text+images", paper=74.72),
    Row("gen_fourier", "generators", "fourier (no weights)", synthesis={"generator": "fourier"}, paper=34.24),
    Row("gen_pixel", "generators", "pixel", synthesis={"generator": "pixel"}),
    Row(
        "gen_decoder",
        "generators",
        "decoder (pretrained shapes-vae)",
        synthesis={"generator": "decoder"},  # the bundled shapes-vae with its fitted latent prior
        paper=62.46,
    ),
)


def class_prompts(task: Task, prompts: str) -> list[ClassPrompts]:
    examples = task.examples(EXAMPLES_PER_CLASS) if prompts == "text+images" else {}
    suffix = f", {CONSTRAINT_PHRASE}" if prompts == "constraint" else ""
    return [ClassPrompts(c.text + suffix, examples.get(c.text)) for c in task.classes]


@torch.no_grad()
def accuracy(student: Student, task: Task, split: Split, images: int) -> float:
    pixels, labels = task.render(split, images, size=student.image_size)
    student.eval()
    predictions = torch.cat([student(chunk).argmax(1) for chunk in pixels.split(500)])
    return float((predictions == labels).float().mean())


class PaperBenchmark:
    def __init__(self, teacher: Teacher, budget: Budget, *, split: Split = "test", log: Callable[[str], None] = print) -> None:
        # split: where students and the teacher are scored; experiments that choose settings use "val".
        self.teacher, self.budget, self.split, self.log = teacher, budget, split, log
        self._surrogates: dict[tuple, tuple[SurrogateSet, torch.Tensor, float]] = {}
        self.stage_seconds: dict[str, list[float]] = {"synthesis": [], "distillation": []}

    def synthesis_config(self, row: Row) -> SynthesisConfig:
        b = self.budget
        base = SynthesisConfig(
            images_per_class=b.images_per_class,
            steps=b.synth_steps,
            cutouts=b.cutouts,
            batch_size=b.synth_batch,
            generator=b.generator,
        )
        return replace(base, **row.synthesis)

    def distill_config(self, method: str) -> DistillConfig:
        b = self.budget
        return DistillConfig(method=method, epochs=b.epochs, warmup_epochs=b.warmup_epochs, batch_size=b.distill_batch)

    def surrogate(self, row: Row, seed: int) -> tuple[SurrogateSet, torch.Tensor]:
        """The synthesized set and the teacher's classifier for a row (cached: rows share sets)."""
        task = get_task(row.task)
        config = self.synthesis_config(row)
        key = (row.task, row.prompts, repr(config), seed)
        if key not in self._surrogates:
            start = time.monotonic()
            styles = list(self.teacher.default_styles) if config.use_styles else []
            targets = build_targets(self.teacher, class_prompts(task, row.prompts), styles)
            data = synthesize(self.teacher, targets, config, seed=seed)
            seconds = time.monotonic() - start
            self.stage_seconds["synthesis"].append(seconds)
            self._surrogates[key] = (data, targets.classifier, seconds)
        data, classifier, _ = self._surrogates[key]
        return data, classifier

    def reference_set(self, row: Row, seed: int) -> tuple[SurrogateSet, torch.Tensor]:
        task = get_task(row.task)
        n = self.budget.images_per_class * len(task.classes)
        classifier = build_targets(self.teacher, class_prompts(task, "text"), []).classifier
        if row.kind == "noise":
            g = torch.Generator().manual_seed(seed)
            images, labels = (
                torch.rand(n, 3, self.teacher.image_size, self.teacher.image_size, generator=g),
                torch.arange(n) % len(task.classes),
            )
        else:
            images, labels = task.render("train", n, size=self.teacher.image_size)
        return SurrogateSet(images, labels, torch.full((n,), -1)), classifier

    def run_row(self, row: Row, seed: int) -> float:
        task = get_task(row.task)
        if row.kind == "teacher":
            return zero_shot(self.teacher, task, split=self.split, images=self.budget.eval_images).accuracy
        data, classifier = self.reference_set(row, seed) if row.kind != "method" else self.surrogate(row, seed)
        torch.manual_seed(seed)
        student = create_student_for(self.teacher, self.budget.student, len(task.classes))
        start = time.monotonic()
        Distiller(student, self.teacher, classifier, self.distill_config(row.method), seed=seed).fit(data)
        self.stage_seconds["distillation"].append(time.monotonic() - start)
        return accuracy(student.cpu(), task, self.split, self.budget.eval_images)

    def run(
        self, seeds: int, rows: tuple[Row, ...] = ROWS, on_seed_done: Callable[[dict[str, object]], None] | None = None
    ) -> dict[str, object]:
        """All rows for seeds 0..seeds-1; ``on_seed_done`` gets the report over the seeds finished so far."""
        results: dict[str, list[float]] = {row.key: [] for row in rows}
        report: dict[str, object] = {}
        for seed in range(seeds):
            for row in rows:
                if row.kind == "teacher" and seed > 0:
                    results[row.key].append(results[row.key][0])  # deterministic: evaluate once
                    continue
                start = time.monotonic()
                value = self.run_row(row, seed)
                results[row.key].append(value)
                self.log(f"seed {seed} {row.key:18s} {value:.4f} ({time.monotonic() - start:.0f}s)")
            report = self.report(results, rows, seed + 1)
            if on_seed_done is not None:
                on_seed_done(report)
        return report

    def report(self, results: dict[str, list[float]], rows: tuple[Row, ...], seeds: int) -> dict[str, object]:
        teacher_accuracy = {row.task: statistics.mean(results[row.key]) for row in rows if row.kind == "teacher"}
        student = create_student_for(self.teacher, self.budget.student, 8).cpu()
        return {
            "budget": asdict(self.budget),
            "seeds": seeds,
            "teacher": self.teacher.name,
            "rows": [
                {
                    **{k: v for k, v in asdict(row).items() if k in ("key", "table", "label", "task", "kind", "method", "paper")},
                    "accuracy": results[row.key],
                    "mean": statistics.mean(results[row.key]),
                    "std": statistics.pstdev(results[row.key]),
                    "ratio_to_teacher": statistics.mean(results[row.key]) / teacher_accuracy[row.task]
                    if row.task in teacher_accuracy
                    else None,
                }
                for row in rows
            ],
            "size": {
                "teacher_image_parameters": count_parameters(self.teacher.model.visual),
                "teacher_image_flops": count_flops(self.teacher.model.visual, self.teacher.image_size),
                "student": self.budget.student,
                "student_parameters": count_parameters(student),
                "student_flops": count_flops(student, self.teacher.image_size),
            },
            "seconds_per_stage": {k: (statistics.mean(v) if v else 0.0) for k, v in self.stage_seconds.items()},
        }


TABLE_TITLES = {
    "references": "References",
    "table1_inversion": "Table 1, inversion (meta KD)",
    "table1_distillation": "Table 1, distillation (SDD + CCM)",
    "batchnorm": "The BatchNorm finding",
    "table6": "Table 6, ambiguous class names",
    "generators": "Generator ablation (SDD + CCM, meta KD)",
}


def seeds_text(report: dict) -> str:
    requested = report.get("seeds_requested", report["seeds"])
    partial = f" of {requested} requested (partial: the run was stopped)" if requested > report["seeds"] else ""
    return f"{report['seeds']} seeds{partial}"


def to_markdown(report: dict) -> str:
    lines = [
        "# The paper's tables on the shapes world",
        "",
        f"Teacher `{report['teacher']}`; student `{report['size']['student']}`; {seeds_text(report)}; "
        f"budget {json.dumps(report['budget'])}.",
        "Accuracy on held-out real test renders (mean ± standard deviation over seeds), beside the paper's",
        "numbers (ImageNet and Caltech tasks, ViT-B/32 teacher). `ratio` is the accuracy over the teacher's zero-shot",
        "accuracy on the same task; the paper's full method reaches 64.81 / 85.65 = 0.757.",
        "",
    ]
    for table, title in TABLE_TITLES.items():
        rows = [r for r in report["rows"] if r["table"] == table]
        if not rows:
            continue
        lines += [f"## {title}", "", "| row | task | ours (%) | ratio | paper (%) |", "|---|---|---|---|---|"]
        for r in rows:
            ratio = "" if r["ratio_to_teacher"] is None else f"{r['ratio_to_teacher']:.3f}"
            paper = "" if r["paper"] is None else f"{r['paper']:.2f}"
            lines.append(f"| {r['label']} | {r['task']} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | {ratio} | {paper} |")
        lines.append("")
    size = report["size"]
    lines += [
        "## Size and time",
        "",
        "| model | parameters | FLOPs per image |",
        "|---|---|---|",
        f"| teacher image tower | {size['teacher_image_parameters']:,} | {size['teacher_image_flops']:,} |",
        f"| student ({size['student']}) | {size['student_parameters']:,} | {size['student_flops']:,} |",
        "",
        "Mean seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in report["seconds_per_stage"].items()) + ".",
        f"Total: {report['total_seconds'] / 60:.1f} min." if "total_seconds" in report else "",
        "",
    ]
    return "\n".join(lines)


def to_chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    labels = [f"{r['label']} [{r['task']}]" for r in rows]
    ours = [100 * r["mean"] for r in rows]
    errors = [100 * r["std"] for r in rows]
    paper = [r["paper"] if r["paper"] is not None else 0.0 for r in rows]
    y = range(len(rows))
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5))
    ax.barh([i + 0.2 for i in y], ours, height=0.4, xerr=errors, label="ours (shapes world)", color="#3b7dd8")
    ax.barh([i - 0.2 for i in y], paper, height=0.4, label="paper", color="#bbbbbb")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy (%)")
    ax.set_xlim(0, 100)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "paper.md").write_text(to_markdown(report))
    to_chart(report, out / "paper.png")
