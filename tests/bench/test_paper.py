"""The benchmark machinery at a toy budget: rows, tiers, seeds, shared students, partial reports, markdown and chart."""

from __future__ import annotations

from dataclasses import replace

from bench.paper import BUDGETS, ROWS, PaperBenchmark, Row, to_markdown, write_report
from core.pipeline import distill_config, resolved_spec, synthesis_config
from core.spec import CustomizeSpec

TOY = replace(
    BUDGETS["quick"],
    eval_images=40,
    ablation_steps=3,
    synthesis={"images_per_class": 2, "batch_size": 16, "cutouts": 1, "init_candidates": 2},
    distillation={"steps": 4},
)


def test_rows_tiers_seeds_and_partial_reports(shapes_teacher, tmp_path) -> None:
    keys = ("teacher_shape8", "noise_kd", "default", "method_vs_bn", "inv_sdd_ccm", "dist_kd")
    rows = tuple(r for r in ROWS if r.key in keys)
    reports: list[dict] = []
    bench = PaperBenchmark(shapes_teacher, TOY, split="val", log=lambda line: None)
    final = bench.run(2, rows, on_seed_done=reports.append)
    # One report per (tier, seed): the product tier's two seeds come first, then the ablation tier's.
    assert len(reports) == 4 and final is reports[-1]
    first = {r["key"]: r for r in reports[0]["rows"]}
    assert first["default"]["seeds"] == 1 and first["inv_sdd_ccm"]["seeds"] == 0 and first["inv_sdd_ccm"]["mean"] is None
    assert reports[1]["seeds"] == 0 and "not run" in to_markdown(reports[1])
    by_key = {r["key"]: r for r in final["rows"]}
    assert final["seeds"] == 2 and all(r["seeds"] == 2 and 0.0 <= r["mean"] <= 1.0 for r in final["rows"])
    assert by_key["teacher_shape8"]["ratio_to_teacher"] == 1.0 and by_key["teacher_shape8"]["mean"] > 0.9
    # The product tier trains as the budget says; the ablation tier for ablation_steps.
    assert by_key["default"]["student_steps"] == 4 and by_key["dist_kd"]["student_steps"] == 3
    # "default" and "method_vs_bn" have identical configs: one student per seed, reported under both names.
    assert by_key["default"]["accuracy"] == by_key["method_vs_bn"]["accuracy"]
    # Surrogate sets: the default's (0 inversion steps) and the inversion rows' (with steps) per seed; dist_kd reuses
    # the default's set: four syntheses in all.
    assert len(bench.stage_seconds["synthesis"]) == 4
    # Students: noise, default, inv_sdd_ccm and dist_kd per seed (method_vs_bn shares the default's).
    assert len(bench.stage_seconds["distillation"]) == 8
    assert final["size"]["student_parameters"] < final["size"]["teacher_image_parameters"]
    # Method rows carry the job's own quality estimates beside their real accuracy.
    tracked = final["quality_tracking"]["rows"]
    assert set(tracked) == {"default", "method_vs_bn", "inv_sdd_ccm", "dist_kd"} and len(bench.quality["dist_kd"]) == 2
    assert all(0 <= v["agreement_prior_samples"] <= 1 and abs(v["accuracy"] - by_key[k]["mean"]) < 1e-4 for k, v in tracked.items())
    assert "Does a job's own quality estimate track real accuracy?" in to_markdown(final)
    partial = {**reports[0], "seeds_requested": 3, "total_seconds": 12.0}
    assert "product tier 1 of 3 seeds (partial); ablation tier 0 of 3 seeds (partial)" in to_markdown(partial)
    write_report(partial, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"paper.json", "paper.md", "paper.png"}


def test_the_default_row_is_a_default_job(shapes_teacher) -> None:
    """The benchmark's configs come from the pipeline's own resolution of a spec with no fields but the classes."""
    bench = PaperBenchmark(shapes_teacher, BUDGETS["full"], log=lambda line: None)
    plan = bench.plan(next(r for r in ROWS if r.key == "default"), seed=3)
    job = resolved_spec(
        CustomizeSpec(teacher=shapes_teacher.name, classes=[c.text for c in get_shape8_classes()], budget="cpu", seed=3), shapes_teacher
    )
    assert plan.synthesis == synthesis_config(job, shapes_teacher) and plan.distillation == distill_config(job)
    assert plan.distillation.fresh_share > 0 and plan.synthesis.generator == "decoder"
    # Ablation rows train the same student for fewer steps; a Fourier row samples nothing fresh (as a job would not).
    fourier = bench.plan(next(r for r in ROWS if r.key == "gen_fourier"))
    assert fourier.distillation.steps == BUDGETS["full"].ablation_steps and fourier.distillation.fresh_share == 0.0
    assert fourier.student == plan.student
    # The BN baseline and the inversion ablation get inversion steps: at the default's 0 they would measure nothing.
    assert bench.plan(next(r for r in ROWS if r.key == "bn_inversion")).synthesis.steps > 0
    assert bench.plan(next(r for r in ROWS if r.key == "inv_sdd")).synthesis.steps > 0
    assert bench.plan(Row("x", "references", "x", tier="product")).distillation.steps == plan.distillation.steps


def get_shape8_classes():
    from bench.tasks import get_task

    return get_task("shape8").classes


def test_rows_sharing_a_student_count_once_in_the_quality_tracking():
    from bench.paper import tracking_summary

    row = {"accuracy": 0.8, "agreement_heldout_synthesized": 0.99, "agreement_prior_samples": 0.7}
    rows = {
        "default": row,
        "dist_kd": dict(row),  # the same student as "default"
        "noise": {"accuracy": 0.1, "agreement_heldout_synthesized": 0.9, "agreement_prior_samples": 0.1},
        "fourier": {"accuracy": 0.2, "agreement_heldout_synthesized": 1.0, "agreement_prior_samples": 0.3},
    }
    summary = tracking_summary(rows)
    assert summary["agreement_prior_samples"]["rows"] == 3 and summary["agreement_prior_samples"]["pearson_r"] > 0.9


def test_runs_over_disjoint_seeds_merge_into_one_report():
    from bench.paper import merge_reports

    def run(values: dict[str, list[float]], estimate: float) -> dict:
        rows = [
            {"key": k, "task": "shape8", "kind": "teacher" if k == "teacher" else "method", "accuracy": v, "seeds": len(v)}
            for k, v in values.items()
        ]
        quality = {"default": {"accuracy": 0.8, "agreement_heldout_synthesized": 1.0, "agreement_prior_samples": estimate}}
        return {"seeds": 1, "seeds_requested": len(values["default"]), "rows": rows, "quality_tracking": {"rows": quality}}

    merged = merge_reports([run({"teacher": [0.9, 0.9], "default": [0.7, 0.8]}, 0.6), run({"teacher": [0.9], "default": [0.9]}, 0.9)])
    default = next(r for r in merged["rows"] if r["key"] == "default")
    assert default["accuracy"] == [0.7, 0.8, 0.9] and abs(default["mean"] - 0.8) < 1e-9
    assert abs(default["ratio_to_teacher"] - 0.8 / 0.9) < 1e-9
    assert merged["seeds"] == 3 and merged["seeds_requested"] == 3  # 2 asked for, then 1 more
    assert abs(merged["quality_tracking"]["rows"]["default"]["agreement_prior_samples"] - 0.7) < 1e-9  # weighted by seeds


def test_an_estimate_that_one_run_lacks_is_left_out_of_the_merge_and_of_the_table():
    from bench.paper import merge_reports, quality_markdown

    def run(quality: dict[str, float]) -> dict:
        rows = [{"key": "default", "task": "shape8", "kind": "method", "accuracy": [0.8], "seeds": 1}]
        return {"seeds": 1, "rows": rows, "quality_tracking": {"rows": {"default": {"accuracy": 0.8, **quality}}}}

    old = run({"agreement_heldout_synthesized": 1.0, "agreement_prior_samples": 0.7})  # written before the balanced one
    new = run({"agreement_heldout_synthesized": 0.9, "agreement_prior_samples": 0.8, "agreement_prior_samples_balanced": 0.75})
    merged = merge_reports([old, new])["quality_tracking"]["rows"]["default"]
    assert "agreement_prior_samples_balanced" not in merged and abs(merged["agreement_prior_samples"] - 0.75) < 1e-9
    table = quality_markdown(merge_reports([new, new])["quality_tracking"]) + quality_markdown(merge_reports([old])["quality_tracking"])
    assert "| default | 0.800 | 0.900 | 0.800 | 0.750 |" in table and "| default | 0.800 | 1.000 | 0.700 |" in table  # no column


def test_the_fashion_world_runs_the_product_references_on_each_of_its_tasks():
    from bench.paper import WORLDS
    from bench.tasks import list_tasks

    world = WORLDS["fashion"]
    assert world.teacher == "fashion-mini"
    keys = [row.key for row in world.rows]
    assert len(keys) == len(set(keys))
    for task in ("fashion10", "fashion-footwear", "fashion-tops"):
        assert task in list_tasks()
        kinds = sorted(row.kind for row in world.rows if row.task == task)
        assert kinds == ["method", "noise", "real_kd", "teacher"]
    assert all(row.tier == "product" for row in world.rows)  # each trained exactly as a default job
