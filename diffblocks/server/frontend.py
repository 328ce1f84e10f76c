"""The official ComfyUI frontend, served at `/` from the `comfyui-frontend-package` wheel (`pip install
diffblocks[ui]`), found as ComfyUI's app/frontend_management.py finds it: the package's `static` folder.
Without the package `/` answers a short page saying how to install it; the API works either way."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from aiohttp import web

logger = logging.getLogger(__name__)

__all__ = ["INSTALL_PAGE", "find_frontend", "frontend_version"]

INSTALL_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>diffblocks server</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>diffblocks server</h1>
<p>The API is running (try <a href="/object_info">/object_info</a>), but the node editor is not installed.</p>
<p>Install it with <code>pip install diffblocks[ui]</code> (the <code>comfyui-frontend-package</code> wheel)
and restart <code>diffblocks serve</code>.</p>
</body></html>
"""


def find_frontend() -> Path | None:
    """The frontend's static folder, or None when `comfyui-frontend-package` is not installed."""
    spec = importlib.util.find_spec("comfyui_frontend_package")
    if spec is None or not spec.submodule_search_locations:
        return None
    static = Path(next(iter(spec.submodule_search_locations))) / "static"
    return static if (static / "index.html").is_file() else None


def frontend_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("comfyui-frontend-package")
    except PackageNotFoundError:
        return None


def add_frontend_routes(app: web.Application, web_root: Path | None) -> None:
    """`/` (index.html, never cached) and the static files under it; the install page without a frontend."""

    async def index(request: web.Request) -> web.StreamResponse:
        if web_root is None:
            return web.Response(text=INSTALL_PAGE, content_type="text/html")
        return web.FileResponse(web_root / "index.html", headers={
            "Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"})

    app.router.add_get("/", index)
    if web_root is not None:
        favicon = web_root / "assets" / "favicon.ico"
        if favicon.is_file():  # browsers ask for /favicon.ico whatever the page links
            app.router.add_get("/favicon.ico", lambda request: web.FileResponse(favicon))
        app.router.add_static("/", web_root)
