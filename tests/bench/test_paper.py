"""The benchmark machinery at a toy budget: rows, seeds, partial reports, markdown and chart."""

from __future__ import annotations

from dataclasses import replace

from bench.paper import BUDGETS, ROWS, PaperBenchmark, to_markdown, write_report

TOY = replace(BUDGETS["quick"], images_per_class=2, synth_steps=2, cutouts=1, synth_batch=16, epochs=1, warmup_epochs=1, eval_images=40)


def test_rows_seeds_and_partial_reports(shapes_teacher, tmp_path) -> None:
    rows = tuple(r for r in ROWS if r.key in ("teacher_shape8", "noise_kd", "inv_sdd_ccm", "dist_kd"))
    reports: list[dict] = []
    bench = PaperBenchmark(shapes_teacher, TOY, split="val", log=lambda line: None)
    final = bench.run(2, rows, on_seed_done=reports.append)
    assert [r["seeds"] for r in reports] == [1, 2] and final is reports[-1]
    by_key = {r["key"]: r for r in final["rows"]}
    assert set(by_key) == {"teacher_shape8", "noise_kd", "inv_sdd_ccm", "dist_kd"}
    assert all(len(r["accuracy"]) == 2 and 0.0 <= r["mean"] <= 1.0 for r in final["rows"])
    assert by_key["teacher_shape8"]["ratio_to_teacher"] == 1.0 and by_key["teacher_shape8"]["mean"] > 0.9
    # inv_sdd_ccm and dist_kd share one surrogate set per seed: two syntheses in all, not four.
    assert len(bench.stage_seconds["synthesis"]) == 2
    assert final["size"]["student_parameters"] < final["size"]["teacher_image_parameters"]
    # Method rows carry the job's own quality estimates beside their real accuracy.
    tracked = final["quality_tracking"]["rows"]
    assert set(tracked) == {"inv_sdd_ccm", "dist_kd"} and len(bench.quality["dist_kd"]) == 2
    assert all(0 <= v["agreement_prior_samples"] <= 1 and abs(v["accuracy"] - by_key[k]["mean"]) < 1e-4 for k, v in tracked.items())
    assert "Does a job's own quality estimate track real accuracy?" in to_markdown(final)
    partial = {**reports[0], "seeds_requested": 3, "total_seconds": 12.0}
    assert "1 seeds of 3 requested (partial" in to_markdown(partial)
    write_report(partial, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"paper.json", "paper.md", "paper.png"}


def test_the_full_budget_is_the_default_jobs() -> None:
    from core.spec import BUDGETS as SPEC_BUDGETS

    full, cpu = BUDGETS["full"], SPEC_BUDGETS["cpu"]
    assert full.distill_steps == cpu["distillation"]["steps"] and full.student == cpu["student"]["arch"]
    assert full.images_per_class == cpu["synthesis"]["images_per_class"] and full.synth_steps == cpu["synthesis"]["steps"]
    assert full.init_candidates == cpu["synthesis"]["init_candidates"] and full.default_method == cpu["distillation"]["method"]
    assert any(row.key == "default" for row in ROWS)
