"""bench.workers without running it (the real run starts Redis, an API and three workers: `clipforge bench workers
--quick` is its machinery check): the job it measures and the report it writes."""

from __future__ import annotations

from bench.workers import DEFAULT_CLASSES, QUICK_SPEC, job_spec, to_markdown


def test_the_default_job_is_make_demos_and_quick_is_a_tiny_split_job():
    spec = job_spec(None, quick=False)
    assert spec["classes"] == DEFAULT_CLASSES and spec["teacher"] == "shapes-mini" and "synthesis" not in spec
    assert job_spec(None, quick=True) == QUICK_SPEC
    quick = QUICK_SPEC["synthesis"]
    assert len(QUICK_SPEC["classes"]) * quick["images_per_class"] // quick["batch_size"] >= 2  # it does split


def test_the_report_shows_each_run_its_speed_up_the_load_and_the_command():
    run = {"chunks": 8, "workers_that_synthesized": 1, "synthesis_seconds": 20.0, "total_seconds": 300.0,
           "load_average_before": [0.1, 0.2, 0.3], "load_average_after": [1.0, 0.5, 0.4]}  # fmt: skip
    report = {
        "spec": QUICK_SPEC,
        "date": "2026-11-29T10:00:00+00:00",
        "cpus": 2,
        "same_student": True,
        "runs": [{**run, "workers": 1}, {**run, "workers": 2, "workers_that_synthesized": 2, "synthesis_seconds": 11.0,
                                         "total_seconds": 291.0, "synthesis_speedup": 1.82, "total_speedup": 1.03}],
    }  # fmt: skip
    markdown = to_markdown(report, "clipforge bench workers")
    assert "| 2 | 8 (2) | 11.0 | 291.0 | 1.82 | 1.03 | 0.1 0.2 0.3 → 1.0 0.5 0.4 |" in markdown
    assert "`clipforge bench workers`" in markdown and "student weights on every run: yes" in markdown
