"""The web console's static files: served at /console/ without a key, self-contained, every form control labelled."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from api.routers.console import CONSOLE_DIR, MEDIA_TYPES
from service.auth import create_key
from service.db import session_scope
from tests.servers import ApiThread, settings_for

STATIC_FILES = sorted(MEDIA_TYPES)
URL = re.compile(r"\b(?:https?:)?//([A-Za-z0-9.-]+)")
LOCAL_HOSTS = {"localhost", "127.0.0.1"}


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    """The real app with an API key in place: the console must load without one all the same."""
    with ApiThread(settings_for(tmp_path_factory.mktemp("console"))) as server, server.client() as client:
        with session_scope(server.app.state.session_factory) as session:
            create_key(session, "console-test")
        yield client


def test_the_console_redirects_to_its_folder_and_serves_its_files_with_their_types(http):
    redirect = http.get("/console", follow_redirects=False)
    assert redirect.status_code in (307, 308) and redirect.headers["location"] == "/console/"
    index = http.get("/console/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert index.text == (CONSOLE_DIR / "index.html").read_text()
    for name, media_type in (("app.js", "text/javascript"), ("style.css", "text/css"), ("index.html", "text/html")):
        response = http.get(f"/console/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].split(";")[0] == media_type
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self'" in response.headers["content-security-policy"]
    # The API itself still wants the key that exists now.
    assert http.get("/v1/jobs").json()["error"]["code"] == "missing_api_key"


NOT_CONSOLE_FILES = ["/console/nothing.js", "/console/..%2Fapp.py", "/console/%2e%2e/routers/console.py", "/console/index.html/x"]


@pytest.mark.parametrize("path", NOT_CONSOLE_FILES)
def test_nothing_but_the_console_files_is_served(http, path):
    response = http.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_console_is_not_in_the_api_schema(http):
    assert not [path for path in http.get("/openapi.json").json()["paths"] if path.startswith("/console")]


@pytest.mark.parametrize("name", STATIC_FILES)
def test_the_console_loads_nothing_from_other_hosts(name):
    text = (CONSOLE_DIR / name).read_text()
    hosts = {match.group(1) for match in URL.finditer(text)}
    assert hosts <= LOCAL_HOSTS, f"{name} names other hosts: {sorted(hosts - LOCAL_HOSTS)}"
    assert "@import" not in text and "cdn" not in text.lower()


class FormControls(HTMLParser):
    """The form controls of a page, the ids that a <label for> names, and the controls wrapped in a <label>."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.label_targets: set[str] = set()
        self.open_labels = 0
        self.wrapped: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "label":
            self.open_labels += 1
            if attributes.get("for"):
                self.label_targets.add(str(attributes["for"]))
        elif tag in ("input", "select", "textarea") and attributes.get("type") != "hidden":
            self.controls.append(attributes)
            if self.open_labels:
                self.wrapped.append(attributes)

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self.open_labels -= 1


def test_every_form_control_of_the_page_has_a_label():
    page = FormControls()
    page.feed((CONSOLE_DIR / "index.html").read_text())
    assert len(page.controls) >= 6  # the parser saw the forms
    unlabelled = [
        control
        for control in page.controls
        if control not in page.wrapped and control.get("id") not in page.label_targets and not control.get("aria-label")
    ]
    assert unlabelled == []


def test_the_page_has_one_main_landmark_headings_and_no_inline_script():
    html = (CONSOLE_DIR / "index.html").read_text()
    assert html.count("<main") == 1 and '<html lang="en">' in html
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) is None  # the Content-Security-Policy allows no inline script
    assert re.search(r"\son[a-z]+=", html) is None  # nor inline event handlers
    assert 'aria-live="polite"' in html


def test_the_console_files_ship_in_the_package():
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    for pattern in ("console/*.html", "console/*.js", "console/*.css"):
        assert pattern in pyproject
