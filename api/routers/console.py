"""The web console: static files (api/console/) served at /console/, no API key needed to load them.

The console's JavaScript sends the user's key with every API call it makes; the files themselves hold no data.
Only the files listed here are served, so nothing else in the package can be reached through this route.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from service.errors import ServiceError

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Everything the console loads comes from this origin; images and downloads are blob: URLs of fetched artifacts.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated on every load (ETag), so an upgraded service serves its new console at once
}

router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)


@router.get("")
def console_root() -> RedirectResponse:
    # Relative URLs in index.html (app.js, style.css) resolve under /console/ only with the trailing slash.
    return RedirectResponse("/console/", status_code=308)


@router.get("/")
def console_index() -> FileResponse:
    return console_file("index.html")


@router.get("/{name}")
def console_file(name: str) -> FileResponse:
    media_type = MEDIA_TYPES.get(name)
    if media_type is None:
        raise ServiceError("not_found", f"the console has no file {name[:100]!r}", 404)
    return FileResponse(CONSOLE_DIR / name, media_type=media_type, headers=HEADERS)
