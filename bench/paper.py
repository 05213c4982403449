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
from core.quality import estimate_quality
from core.spec import BUDGETS as SPEC_BUDGETS
from core.students import Student, count_flops, count_parameters, create_student_for
from core.synthesis import ClassPrompts, InversionTargets, SurrogateSet, SynthesisConfig, build_targets, synthesize
from core.teachers.base import Teacher

CPU_BUDGET = SPEC_BUDGETS["cpu"]
QUALITY_ESTIMATES = ("agreement_heldout_synthesized", "agreement_prior_samples")

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
    distill_steps: int | None = None  # student updates per row; None: epochs x batches per epoch
    init_candidates: int = 1  # prior starts per image, the most class-like kept by the teacher
    prior: str = "fitted"  # the decoder's latent prior (decoder rows)
    default_method: str = "meta_kd"  # the distillation loss of a default job (the "default" row)


def default_job_budget(eval_images: int) -> Budget:
    """Every row trains as a default job does on a CPU (core.spec.BUDGETS["cpu"])."""
    synthesis, distillation, student = (CPU_BUDGET[k] for k in ("synthesis", "distillation", "student"))
    return Budget(
        images_per_class=int(synthesis["images_per_class"]),
        synth_steps=int(synthesis["steps"]),
        cutouts=int(synthesis["cutouts"]),
        synth_batch=int(synthesis["batch_size"]),
        epochs=1,
        warmup_epochs=10,  # the spec's default; meta rows warm up for this many epochs' worth of steps
        distill_batch=64,
        student=str(student["arch"]),
        eval_images=eval_images,
        generator="decoder",
        distill_steps=int(distillation["steps"]),
        init_candidates=int(synthesis["init_candidates"]),
        default_method=str(distillation["method"]),
    )


BUDGETS = {
    # The product's budget: every row as a default job on 2 CPU cores (issue 10), 2,000 test renders per score.
    "full": default_job_budget(eval_images=2000),
    # Before issue 10: sized so that 3 seeds fit 60 minutes on 2 CPU cores (bench/results/experiments.md).
    "small": Budget(
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
    Row("default", "references", "the default job (the spec's defaults)", method="default", paper=64.81),
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
        synthesis={"generator": "decoder"},  # the bundled shapes-vae with its default latent prior (a kernel density)
        paper=62.46,
    ),
    Row(
        "gen_decoder_gaussian",
        "generators",
        "decoder, one Gaussian latent prior",
        synthesis={"generator": "decoder", "generator_options": (("decoder", "shapes-vae"), ("prior", "gaussian"))},
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
    def __init__(
        self, teacher: Teacher, budget: Budget, *, split: Split = "test", log: Callable[[str], None] = print, track_quality: bool = True
    ) -> None:
        self.track_quality = track_quality
        # split: where students and the teacher are scored; experiments that choose settings use "val".
        self.teacher, self.budget, self.split, self.log = teacher, budget, split, log
        self._surrogates: dict[tuple, tuple[SurrogateSet, InversionTargets, float]] = {}
        # Method rows: the job's own quality estimates (core.quality), to see how well each tracks real accuracy.
        self.quality: dict[str, list[dict[str, float | int]]] = {}
        self.stage_seconds: dict[str, list[float]] = {"synthesis": [], "distillation": []}

    def synthesis_config(self, row: Row) -> SynthesisConfig:
        b = self.budget
        base = SynthesisConfig(
            images_per_class=b.images_per_class,
            steps=b.synth_steps,
            cutouts=b.cutouts,
            batch_size=b.synth_batch,
            generator=b.generator,
            init_candidates=b.init_candidates,
        )
        config = replace(base, **row.synthesis)
        if config.generator == "decoder" and not config.generator_options:
            config = replace(config, generator_options=(("decoder", "shapes-vae"), ("prior", b.prior)))
        if config.generator != "decoder" or config.objective != "matching":
            config = replace(config, init_candidates=1)  # choosing starts by the teacher is part of the decoder method
        return config

    def distill_config(self, method: str) -> DistillConfig:
        b = self.budget
        method = b.default_method if method == "default" else method
        return DistillConfig(
            method=method, epochs=b.epochs, steps=b.distill_steps, warmup_epochs=b.warmup_epochs, batch_size=b.distill_batch
        )

    def surrogate(self, row: Row, seed: int) -> tuple[SurrogateSet, InversionTargets]:
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
            self._surrogates[key] = (data, targets, seconds)
        data, targets, _ = self._surrogates[key]
        return data, targets

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
        targets = None
        if row.kind == "method":
            data, targets = self.surrogate(row, seed)
            classifier = targets.classifier
        else:
            data, classifier = self.reference_set(row, seed)
        torch.manual_seed(seed)
        student = create_student_for(self.teacher, self.budget.student, len(task.classes))
        start = time.monotonic()
        Distiller(student, self.teacher, classifier, self.distill_config(row.method), seed=seed).fit(data)
        self.stage_seconds["distillation"].append(time.monotonic() - start)
        student = student.cpu().eval()
        if targets is not None and self.track_quality:
            estimate = estimate_quality(student, self.teacher, targets, self.synthesis_config(row), seed=seed)
            self.quality.setdefault(row.key, []).append(estimate)
        return accuracy(student, task, self.split, self.budget.eval_images)

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
            "quality_tracking": self.quality_tracking(results),
        }

    def quality_tracking(self, results: dict[str, list[float]]) -> dict[str, object]:
        """Per method row, the mean of each quality estimate beside the real accuracy, and across rows how
        well each estimate tracks it (Pearson correlation, mean of estimate minus accuracy)."""
        rows = {key: estimates for key, estimates in self.quality.items() if results.get(key)}
        out: dict[str, object] = {"rows": {}}
        for name in QUALITY_ESTIMATES:
            pairs = [(statistics.mean(e[name] for e in rows[key]), statistics.mean(results[key])) for key in rows]
            for key, (estimate, _) in zip(rows, pairs, strict=True):
                out["rows"].setdefault(key, {"accuracy": round(statistics.mean(results[key]), 4)})[name] = round(estimate, 4)
            if len(pairs) >= 3 and len({a for _, a in pairs}) > 1 and len({e for e, _ in pairs}) > 1:
                out[name] = {
                    "pearson_r": round(statistics.correlation([e for e, _ in pairs], [a for _, a in pairs]), 3),
                    "mean_estimate_minus_accuracy": round(statistics.mean(e - a for e, a in pairs), 4),
                }
        return out


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
        "",
        *quality_markdown(report.get("quality_tracking")),
        f"Total: {report['total_seconds'] / 60:.1f} min." if "total_seconds" in report else "",
        "",
    ]
    return "\n".join(lines)


def quality_markdown(tracking: dict | None) -> list[str]:
    """How well a job's own estimates (agreement with the teacher on unseen images) track real accuracy."""
    if not tracking or not tracking.get("rows"):
        return []
    lines = [
        "## Does a job's own quality estimate track real accuracy?",
        "",
        "Each method row's student, scored as a job scores itself (no real data): its agreement with the teacher on",
        "held-out synthesized images and on prior samples, beside its real accuracy.",
        "",
        "| row | real accuracy | agreement, held-out synthesized | agreement, prior samples |",
        "|---|---|---|---|",
    ]
    for key, row in tracking["rows"].items():
        held_out, prior = (row.get(name, float("nan")) for name in QUALITY_ESTIMATES)
        lines.append(f"| {key} | {row['accuracy']:.3f} | {held_out:.3f} | {prior:.3f} |")
    lines.append("")
    for name in QUALITY_ESTIMATES:
        if name in tracking:
            r, gap = tracking[name]["pearson_r"], tracking[name]["mean_estimate_minus_accuracy"]
            lines.append(f"- `{name}`: Pearson r {r} with real accuracy across rows; mean estimate minus accuracy {gap}.")
    lines.append("")
    return lines


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
