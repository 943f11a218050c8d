"""The web studio: `/` serves the single page, `/static/...` its files (no
CDN: everything the browser loads comes from here)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"

router = APIRouter(include_in_schema=False)

# The page and its scripts change with each release; browsers revalidate them.
_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob: http: https:; "
        "media-src 'self' blob: http: https:; connect-src 'self'; "
        "style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(WEB_ROOT / "index.html", headers=_HEADERS)


class _Static(StaticFiles):
    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers.setdefault("Cache-Control", "no-cache")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response


def mount(app) -> None:
    app.include_router(router)
    app.mount("/static", _Static(directory=WEB_ROOT), name="static")
