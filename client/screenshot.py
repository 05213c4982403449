"""The README's console screenshots, docs/console.png and docs/try-it.png, taken from a real default job.

``python -m client.screenshot`` starts `clipforge serve` on a free port with a fresh data dir under runs/, submits the
default job of bench/configs/demo.json (the 8 shape classes, the teacher and a seed: nothing else), follows it to
success, evaluates its student through the service on held-out test renders (as `make demo` does), then opens the
job's page in headless Chromium (Debian's ``chromium``, driven by playwright) and saves it from the top down to the
evaluation's confusion matrices (the grid of mistakes below them would double the picture's height); then classifies
six held-out renders in its Try it box and saves that section (docs/try-it.png).
``--data-dir DIR --job JOB`` takes the picture of a job that an earlier run left in DIR instead (no new job).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from client import ClipforgeClient
from client.demo import CONFIG, SHAPE8, serving, write_test_pngs
from client.progress import follow

OUT = Path("docs/console.png")
TRY_IT_OUT = Path("docs/try-it.png")
TRY_IT_IMAGES = 6  # held-out renders classified in the Try it picture, one of each of the first classes
VIEWPORT = {"width": 1280, "height": 900}
MARGIN_PX = 16  # below the confusion matrices' caption (the next figure starts 20 px down)
# Where the picture ends: the bottom of the newest evaluation's first figure (its confusion matrices), in page pixels.
PICTURE_BOTTOM = """() => {
  const figure = document.querySelector("#evaluations article figure");
  return figure.getBoundingClientRect().bottom + window.scrollY;
}"""
PAGE_TIMEOUT_MS = 60_000


def run_default_job(client: ClipforgeClient, data_dir: Path) -> str:
    """Submits the demo's default job, follows it and evaluates its student; the job's id."""
    job = client.submit({**json.loads(CONFIG.read_text()), "classes": SHAPE8})
    began = time.monotonic()
    job = follow(client, job.id)
    if job.status != "succeeded":
        raise SystemExit(f"job {job.id} {job.status}: {job.error}")
    print(f"job {job.id} succeeded in {time.monotonic() - began:.0f} s", flush=True)
    evaluation = client.evaluate(job.id, images=write_test_pngs(data_dir / "evaluation-images"))
    evaluation = client.wait_evaluation(job.id, evaluation.id, timeout=900)
    if evaluation.status != "succeeded" or evaluation.result is None:
        raise SystemExit(f"evaluation {evaluation.id} {evaluation.status}: {evaluation.error}")
    return job.id


def screenshot(url: str, job_id: str, out: Path, try_it_out: Path = TRY_IT_OUT) -> None:
    """The job page, once its samples, model card, evaluation table and figures have loaded, down to the confusion
    matrices; then its Try it section with held-out renders classified."""
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium package (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.goto(f"{url}/console/")
        page.get_by_role("button", name="Continue in open mode").click()
        expect(page.get_by_role("heading", name="Jobs", level=1)).to_be_visible()
        page.goto(f"{url}/console/#/jobs/{job_id}")
        expect(page.locator("#job-status")).to_have_text("succeeded")
        expect(page.locator("#stream-state")).to_contain_text("ended")
        expect(page.locator("#job-card-section")).to_be_visible()
        expect(page.locator("#evaluations article .badge").first).to_have_text("succeeded")
        page.wait_for_function("document.getElementById('job-samples').naturalWidth > 0")
        page.wait_for_function("[...document.querySelectorAll('#evaluations img')].every((img) => img.complete && img.naturalWidth > 0)")
        out.parent.mkdir(parents=True, exist_ok=True)
        height = page.evaluate(PICTURE_BOTTOM) + MARGIN_PX
        page.screenshot(path=out, full_page=True, clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": height})
        print(f"wrote {out}", flush=True)
        renders = write_test_pngs(Path(tempfile.mkdtemp(prefix="try-it-")), per_class=1)
        page.get_by_label("Images to classify", exact=True).set_input_files([paths[0] for paths in renders.values()][:TRY_IT_IMAGES])
        page.get_by_role("button", name="Classify", exact=True).click()
        expect(page.locator("#try-results .prediction")).to_have_count(TRY_IT_IMAGES)
        page.wait_for_function("[...document.querySelectorAll('#try-results img')].every((img) => img.complete && img.naturalWidth > 0)")
        page.locator("#try-section").screenshot(path=try_it_out)
        browser.close()
    print(f"wrote {try_it_out}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="a data dir an earlier run left (with --job)")
    parser.add_argument("--job", help="the id of a succeeded, evaluated job in --data-dir")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if (args.data_dir is None) != (args.job is None):
        parser.error("--data-dir and --job go together")
    if args.data_dir is None:
        Path("runs").mkdir(exist_ok=True)
        data_dir = Path(tempfile.mkdtemp(prefix="console-screenshot-", dir="runs")).resolve()
    else:
        data_dir = args.data_dir.resolve()
    with serving(data_dir) as client:
        screenshot(client.url, args.job or run_default_job(client, data_dir), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
