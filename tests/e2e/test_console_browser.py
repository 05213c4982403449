"""The web console in a real browser: headless Debian chromium driven by playwright against `clipforge serve`.

Signs in (open mode on loopback), submits a 3-class job, follows it live to success, downloads the ONNX student,
evaluates it on rendered shapes and sees the confusion matrix; a job that does not exist gets a plain notice. Pages are
saved as PNG files under the test's tmp_path; the README's screenshot, docs/console.png, is of a real default job
instead (`python -m client.screenshot`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.auth import create_key, revoke_key
from service.db import session_scope
from tests.servers import TINY_SPEC, ApiThread, free_port, service_env, settings_for, start_cli, wait_until

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("needs Debian's chromium package (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Page, Route, expect, sync_playwright  # noqa: E402  (after the skip: no browser, no import)

CLASSES = ["circle", "square", "triangle"]  # the first three classes of shape8, in its order
JOB_TIMEOUT_MS = 300_000
EVALUATION_TIMEOUT_MS = 180_000
# Records every status, stage and progress text the job page shows, to check that it followed the job live.
RECORD_JOB_PAGE = """
document.addEventListener("DOMContentLoaded", () => {
  window.seen = { status: [], stage: [], progress: [], eta: [], budget: [] };
  const note = (list, value) => { if (value && list[list.length - 1] !== value) list.push(value); };
  new MutationObserver(() => {
    note(window.seen.status, document.getElementById("job-status")?.textContent);
    note(window.seen.stage, document.getElementById("job-stage")?.textContent);
    note(window.seen.progress, document.getElementById("job-progress-text")?.textContent);
    note(window.seen.eta, document.getElementById("job-eta")?.textContent);
    note(window.seen.budget, document.getElementById("job-budget")?.textContent);
  }).observe(document.getElementById("view-job"), { subtree: true, childList: true, characterData: true });
});
"""


@pytest.fixture(scope="module")
def service_url(tmp_path_factory) -> Iterator[str]:
    """`clipforge serve` on loopback with no API key: open mode."""
    data_dir = tmp_path_factory.mktemp("console-serve")
    port = free_port()
    process = start_cli(["serve", "--port", str(port)], service_env(data_dir), data_dir / "serve.log")
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 60, 0.2, "clipforge serve ready")
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    context.add_init_script(RECORD_JOB_PAGE)
    page = context.new_page()
    uncaught: list[str] = []
    page.on("pageerror", lambda error: uncaught.append(str(error)))
    yield page
    context.close()
    assert uncaught == [], f"the console threw: {uncaught}"


def open_console(page: Page, service_url: str) -> None:
    page.goto(f"{service_url}/console")
    expect(page).to_have_url(f"{service_url}/console/")
    expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_visible()


def sign_in_open_mode(page: Page, service_url: str) -> None:
    open_console(page, service_url)
    page.get_by_role("button", name="Continue in open mode").click()
    expect(page.get_by_role("heading", name="Jobs", level=1)).to_be_visible()
    expect(page.get_by_text("Open mode (no API key)")).to_be_visible()


def save_screenshot(page: Page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=tmp_path / f"{name}.png", full_page=True)


TRY_IT_GEOMETRY = """() => {
    const problems = [];
    const inside = (inner, outer) => inner.left >= outer.left - 0.5 && inner.right <= outer.right + 0.5
        && inner.top >= outer.top - 0.5 && inner.bottom <= outer.bottom + 0.5;
    const results = document.querySelector("#try-results");
    const area = results.getBoundingClientRect();
    const cards = [...results.querySelectorAll(".prediction")];
    const boxes = cards.map((card) => card.getBoundingClientRect());
    boxes.forEach((box, i) => {
        if (!inside(box, area)) problems.push(`result ${i} outside the results`);
        boxes.slice(i + 1).forEach((other, j) => {
            const apart = box.right <= other.left + 0.5 || other.right <= box.left + 0.5
                || box.bottom <= other.top + 0.5 || other.bottom <= box.top + 0.5;
            if (!apart) problems.push(`results ${i} and ${i + j + 1} overlap`);
        });
        for (const part of cards[i].querySelectorAll("*")) {
            const rect = part.getBoundingClientRect();
            if (rect.width > 0 && rect.height > 0 && !inside(rect, box)) problems.push(`result ${i}: a ${part.tagName} leaves its card`);
        }
        const image = cards[i].querySelector("img").getBoundingClientRect();
        if (image.width < 64 || image.height < 64) problems.push(`result ${i}: its image is ${image.width}x${image.height} px`);
    });
    if (document.documentElement.scrollWidth > window.innerWidth) problems.push("the page scrolls sideways");
    return problems;
}"""


def try_it_geometry(page: Page) -> list[str]:
    """What a person would see wrong in the Try it results: overlaps, parts outside their card, small images."""
    return page.evaluate(TRY_IT_GEOMETRY)


def unlabelled_controls(page: Page) -> list[str]:
    script = """[...document.querySelectorAll("input, select, textarea")]
        .filter((control) => control.type !== "hidden" && control.labels.length === 0 && !control.getAttribute("aria-label"))
        .map((control) => control.outerHTML)"""
    return page.evaluate(script)


def render_shapes(folder: Path, per_class: int) -> dict[str, list[Path]]:
    """PNG test renders of shape8 for the job's classes, ``per_class`` of each."""
    import numpy as np
    from PIL import Image

    from bench.tasks import get_task

    images, labels = get_task("shape8").render("test", 8 * per_class)
    files: dict[str, list[Path]] = {name: [] for name in CLASSES}
    for index, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        if label < len(CLASSES):
            path = folder / f"{CLASSES[label]}-{index}.png"
            Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
            files[CLASSES[label]].append(path)
    assert all(len(paths) == per_class for paths in files.values())
    return files


def test_a_wrong_key_is_refused_with_the_services_error_code(page: Page, service_url: str):
    open_console(page, service_url)
    page.get_by_label("API key").fill("cfk.key_00000000000000000000000000.not-a-real-secret")
    page.keyboard.press("Enter")  # the form submits from the keyboard
    expect(page.get_by_role("alert").filter(has_text="invalid_api_key")).to_be_visible()
    expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_visible()


def test_a_refused_submission_shows_each_problems_code(page: Page, service_url: str):
    sign_in_open_mode(page, service_url)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="New job").click()
    page.get_by_label("Class names").fill("circle")
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("#new-job-error")).to_contain_text("too_few_classes")
    expect(page.get_by_role("heading", name="New job", level=1)).to_be_visible()


def test_a_keyed_service_signs_in_takes_example_images_cancels_deletes_and_signs_out_a_revoked_key(page: Page, tmp_path: Path):
    """An API without a worker (jobs stay queued) that has an API key: no open mode; the key's session submits a job
    with example images (multipart), cancels and deletes it; once the key is revoked the console signs out."""
    with ApiThread(settings_for(tmp_path / "service")) as server:
        with session_scope(server.app.state.session_factory) as session:
            key_id, key = create_key(session, "console")
        open_console(page, server.url)
        page.get_by_role("button", name="Continue in open mode").click()
        expect(page.locator("#sign-in-error")).to_contain_text("missing_api_key")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Sign in", exact=True).click()
        expect(page.get_by_text("Signed in with an API key")).to_be_visible()
        expect(page.locator("#jobs-empty")).to_be_visible()  # this tenant has no job yet

        examples = render_shapes(tmp_path, per_class=2)
        page.get_by_role("navigation", name="Main").get_by_role("link", name="New job").click()
        page.get_by_label("Class names").fill("circle, square")
        page.get_by_label("Example images of circle", exact=True).set_input_files(examples["circle"])
        page.get_by_role("button", name="Submit job").click()
        expect(page.locator("#job-status")).to_have_text("queued")
        expect(page.locator("#job-eta")).to_contain_text("once it starts")
        job_id = page.url.rsplit("/", 1)[1]
        job = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}).json()
        assert [(c["name"], len(c["images"])) for c in job["spec"]["classes"]] == [("circle", 2), ("square", 0)]

        page.get_by_role("button", name="Cancel job").click()
        expect(page.locator("#job-status")).to_have_text("cancelled")
        expect(page.locator("#stream-state")).to_contain_text("ended")
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Delete job").click()
        expect(page.get_by_role("heading", name="Jobs", level=1)).to_be_visible()
        expect(page.locator("#jobs-empty")).to_be_visible()

        with session_scope(server.app.state.session_factory) as session:
            revoke_key(session, key_id)
        page.get_by_role("button", name="Refresh").click()
        expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_visible()
        expect(page.locator("#sign-in-error")).to_contain_text("invalid_api_key")


def test_submit_follow_download_and_evaluate_a_job(page: Page, service_url: str, tmp_path: Path):
    sign_in_open_mode(page, service_url)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="New job").click()
    page.get_by_label("Class names").fill("\n".join(CLASSES))
    page.get_by_label("Seed (optional)").fill("21")
    expect(page.get_by_label("Example images of triangle", exact=True)).to_be_attached()  # a chooser per class typed
    page.get_by_text("Advanced: spec JSON").click()
    page.get_by_label("More spec fields (a JSON object)").fill(json.dumps(TINY_SPEC))
    page.get_by_role("button", name="Submit job").click()

    # The job page follows the job live (the SSE stream read with fetch) until it succeeds.
    expect(page).to_have_url(re.compile(r"#/jobs/job_[0-9a-z]{26}$"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-id")).to_have_text(job_id)
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#job-progress-text")).to_have_text("100%")
    expect(page.locator("#stream-state")).to_contain_text("ended")
    seen = page.evaluate("window.seen")
    assert "running" in seen["status"] and {"synthesizing", "distilling"} & set(seen["stage"]), seen
    assert any(0 < int(text.rstrip("%")) < 100 for text in seen["progress"]), seen
    assert any(re.fullmatch(r"\d+ s|\d+ min \d+ s", eta) for eta in seen["eta"]), seen  # time left while it ran
    # The budget: "auto" said as undecided while the job runs, then the one its worker chose, never a bare "auto".
    assert set(seen["budget"]) <= {"auto (decided by the worker)", "cpu (auto: decided by the worker)"}, seen
    expect(page.locator("#job-budget")).to_have_text("cpu (auto: decided by the worker)")
    expect(page.locator("#job-events")).to_contain_text("succeeded")
    job = httpx.get(f"{service_url}/v1/jobs/{job_id}").json()
    assert job["seed"] == 21 and [c["name"] for c in job["spec"]["classes"]] == CLASSES
    assert job["spec"]["student"]["arch"] == "tiny_cnn"  # the advanced spec JSON reached the service

    # The samples grid and the model card, fetched with the key (none here) and shown from blob: URLs.
    page.wait_for_function("document.getElementById('job-samples').naturalWidth > 0")
    assert page.get_attribute("#job-samples", "src").startswith("blob:")
    expect(page.locator("#job-card")).to_contain_text(", ".join(CLASSES))
    expect(page.locator("#job-card")).to_contain_text("tiny_cnn")
    expect(page.get_by_role("button", name="Delete job")).to_be_enabled()
    expect(page.get_by_role("button", name="Cancel job")).to_be_disabled()
    save_screenshot(page, tmp_path, "job")

    # Every artifact has a download button; the ONNX student arrives whole and is a model with its card.
    artifacts = httpx.get(f"{service_url}/v1/jobs/{job_id}/artifacts").json()["data"]
    for artifact in artifacts:
        expect(page.get_by_role("button", name=f"Download {artifact['name']}", exact=True)).to_be_visible()
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download student.onnx", exact=True).click()
    download = download_info.value
    assert download.suggested_filename == "student.onnx"
    onnx_bytes = Path(download.path()).read_bytes()
    onnx_artifact = next(a for a in artifacts if a["name"] == "student.onnx")
    assert hashlib.sha256(onnx_bytes).hexdigest() == onnx_artifact["sha256"]
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    card = json.loads({prop.key: prop.value for prop in model.metadata_props}["clipforge_model_card"])
    assert card["classes"] == CLASSES

    # The job list shows it, newest first, succeeded.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Jobs").click()
    row = page.locator("#jobs-body tr").first
    expect(row).to_contain_text(job_id)
    expect(row).to_contain_text("succeeded")
    row.get_by_role("link", name=job_id).click()
    expect(page.locator("#job-status")).to_have_text("succeeded")

    # An evaluation on labelled renders: images per class, then the scores and the confusion matrix.
    images = render_shapes(tmp_path, per_class=4)
    for name, paths in images.items():
        page.get_by_label(f"Images of {name}", exact=True).set_input_files(paths)
    assert unlabelled_controls(page) == []
    page.get_by_role("button", name="Evaluate").click()
    expect(page.locator("#evaluation-error")).to_be_empty()
    evaluation = page.locator("#evaluations article").first
    expect(evaluation.locator(".badge")).to_have_text("succeeded", timeout=EVALUATION_TIMEOUT_MS)
    table = evaluation.get_by_role("table")
    for name in CLASSES:
        expect(table.get_by_role("row", name=re.compile(rf"^{name}\b"))).to_contain_text("4")
    expect(table.get_by_role("row", name=re.compile(r"^All classes"))).to_contain_text("12")
    confusion = evaluation.locator("img.evaluation-confusion")
    expect(confusion).to_be_visible()
    page.wait_for_function("document.querySelector('img.evaluation-confusion').naturalWidth > 0")
    save_screenshot(page, tmp_path, "evaluation")

    # "Try it": three renders through the predictions endpoint, each shown with its image and its top classes, the
    # labels the endpoint gives for the same files.
    tried = [paths[0] for paths in images.values()]
    page.get_by_label("Images to classify", exact=True).set_input_files(tried)
    page.get_by_role("button", name="Classify", exact=True).click()
    expect(page.locator("#try-error")).to_be_empty()
    expect(page.locator("#try-results .prediction")).to_have_count(len(tried))
    files = [("images", (Path(p).name, Path(p).read_bytes(), "image/png")) for p in tried]
    answered = httpx.post(f"{service_url}/v1/jobs/{job_id}/predictions", params={"top_k": 3}, files=files, timeout=60).json()
    shown = page.locator("#try-results .prediction-label").all_inner_texts()
    assert shown == [p["label"] for p in answered["predictions"]]
    expect(page.locator("#try-results .prediction ol li")).to_have_count(3 * len(tried))
    flagged = [p for p in answered["predictions"] if p["unknown"]]
    expect(page.locator("#try-results .flag")).to_have_count(len(flagged))  # a flag beside the label, never instead of it
    save_screenshot(page, tmp_path, "try-it")

    # What a person sees, at a desktop's and a phone's width, with 5 and with 16 images: no two results overlap, each
    # stays inside the results and everything in it inside its card, images at least 64 px, no sideways scrolling.
    extra = tmp_path / "try-more"
    extra.mkdir()
    many = [path for paths in render_shapes(extra, per_class=6).values() for path in paths][:16]
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        for count in (5, 16):
            page.get_by_label("Images to classify", exact=True).set_input_files(many[:count])
            page.get_by_role("button", name="Classify", exact=True).click()
            expect(page.locator("#try-results .prediction")).to_have_count(count)
            loaded = "[...document.querySelectorAll('#try-results img')].filter((i) => i.naturalWidth > 0).length"
            page.wait_for_function(f"{loaded} === {count}")
            assert try_it_geometry(page) == [], (width, count)
            save_screenshot(page, tmp_path, f"try-it-{width}px-{count}")
    page.set_viewport_size({"width": 1280, "height": 900})


def test_a_job_that_does_not_exist_says_so_and_offers_no_actions(page: Page, service_url: str):
    missing = "job_" + "0" * 26
    sign_in_open_mode(page, service_url)
    page.goto(f"{service_url}/console/#/jobs/{missing}")
    expect(page.get_by_role("heading", name="Job not found", level=1)).to_be_visible()
    expect(page.locator("#job-not-found")).to_contain_text(f"There is no job {missing}")
    expect(page).to_have_title(re.compile(r"^Job not found"))
    # No empty panels and nothing to act on: no progress, details or events, no Cancel or Delete.
    for name in ("Cancel job", "Delete job"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    for heading in ("Progress", "Details", "Events"):
        expect(page.get_by_role("heading", name=heading, level=2)).to_have_count(0)
    expect(page.locator("#job-error")).to_be_empty()  # the notice says it; no raw error code beside it
    page.locator("#job-not-found").get_by_role("link", name="See your jobs").click()
    expect(page.get_by_role("heading", name="Jobs", level=1)).to_be_visible()


def test_a_dropped_event_stream_resumes_after_the_last_event_seen(page: Page, service_url: str):
    """The console reads the stream with fetch(); when it drops, the console reconnects with Last-Event-ID and shows
    every event once. The first connection is cut after one real event (a finished job's stream, replayed)."""
    job_id = httpx.get(f"{service_url}/v1/jobs", params={"status": "succeeded", "limit": 1}).json()["data"][0]["id"]
    events = httpx.get(f"{service_url}/v1/jobs/{job_id}/events", params={"limit": 500}).json()["data"]
    replay = httpx.get(f"{service_url}/v1/jobs/{job_id}/events", params={"stream": "true"}, timeout=30).text
    first_block = re.split(r"\r?\n\r?\n", replay, maxsplit=1)[0] + "\r\n\r\n"
    first_id = re.search(r"^id: ?(\d+)", first_block, re.MULTILINE)[1]
    last_event_ids: list[str | None] = []

    def cut_the_first_stream(route: Route) -> None:
        last_event_ids.append(route.request.headers.get("last-event-id"))
        if len(last_event_ids) == 1:
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=first_block)
        else:
            route.continue_()

    sign_in_open_mode(page, service_url)
    page.route(re.compile(r"/events\?stream=true$"), cut_the_first_stream)
    page.goto(f"{service_url}/console/#/jobs/{job_id}")
    expect(page.locator("#stream-state")).to_contain_text("ended", timeout=30_000)
    assert last_event_ids == [None, first_id]
    logged = [e for e in events if e["kind"] in ("status", "stage", "warning", "error")]
    expect(page.locator("#job-events li")).to_have_count(len(logged))
    expect(page.locator("#job-status")).to_have_text("succeeded")
    page.reload()  # the tab keeps its sign-in (session storage) and its route
    expect(page.get_by_text("Open mode (no API key)")).to_be_visible()
    expect(page.locator("#job-status")).to_have_text("succeeded")


def test_image_pools_are_created_listed_shown_and_deleted(page: Page, service_url: str, tmp_path: Path):
    files = render_shapes(tmp_path, 1)
    sign_in_open_mode(page, service_url)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Image pools").click()
    expect(page.get_by_role("heading", name="Image pools", level=1)).to_be_visible()
    assert unlabelled_controls(page) == []
    page.get_by_label("Images", exact=True).set_input_files([str(paths[0]) for paths in files.values()])
    page.get_by_label("Name (optional)").fill("my renders")
    page.get_by_role("button", name="Create pool").click()
    row = page.locator("#pools-body tr").filter(has_text="my renders")
    expect(row).to_contain_text(str(len(files)))
    expect(row.get_by_role("img")).to_have_js_property("complete", True)
    assert row.get_by_role("img").evaluate("img => img.naturalWidth") > 0  # the grid arrived through the key's fetch
    row.get_by_role("button", name="Delete").click()
    expect(page.locator("#pools-body tr").filter(has_text="my renders")).to_have_count(0)
