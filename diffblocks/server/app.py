"""`create_app`: the aiohttp application of `diffblocks serve` (ComfyUI's HTTP + WebSocket API over our engine).

aiohttp because ComfyUI's own server is written on it: routing, multipart uploads, static files and the socket
behave on the wire as the frontend and existing API clients expect. Every route is also served under `/api`
(the spelling the current frontend uses), and the frontend's static files are served at `/` last.

Requests never take the server down: a handler that raises answers 500 with the error as JSON, a failing node
is reported on the socket and in the history, and the worker goes on with the next prompt. Like ComfyUI, a
request whose `Origin` is another site than the loopback `Host` it was sent to is refused (403), so a web page
cannot queue prompts on a local server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from .api import ApiRoutes
from .files import FileRoutes
from .frontend import add_frontend_routes, find_frontend
from .logs import LogBuffer
from .queue import PromptQueue
from .userdata import UserData
from .worker import PromptWorker
from .ws import SocketHub

logger = logging.getLogger(__name__)

__all__ = ["ENGINE", "MAX_UPLOAD_SIZE", "QUEUE", "WORKER", "create_app"]

MAX_UPLOAD_SIZE = 100 * 1024 * 1024  # ComfyUI's default --max-upload-size (100 MB)
_AUTO = object()
ENGINE = web.AppKey("engine", object)
QUEUE = web.AppKey("queue", PromptQueue)
WORKER = web.AppKey("worker", PromptWorker)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        logger.exception("%s %s failed", request.method, request.path)
        error = {"type": "server_error", "message": f"{type(exc).__name__}: {exc}", "details": "",
                 "extra_info": {}}
        return web.json_response({"error": error}, status=500)


@web.middleware
async def _log_unrouted(request: web.Request, handler):
    """Name API paths nobody answers (a frontend call this server lacks shows up in the log)."""
    route = request.match_info.route
    unrouted = request.match_info.http_exception is not None or isinstance(route.resource, web.StaticResource)
    if unrouted and request.path.startswith(("/api/", "/internal/")):  # the static files' catch-all is no route
        logger.warning("no route for %s %s", request.method, request.path)
    return await handler(request)


@web.middleware
async def _same_origin(request: web.Request, handler):
    host, origin = request.headers.get("Host"), request.headers.get("Origin")
    if host and origin:
        host_parts, origin_parts = urlsplit("//" + host.lower()), urlsplit(origin.lower())
        if _is_loopback(host_parts.hostname):
            same = (origin_parts.netloc == host_parts.netloc if origin_parts.port and host_parts.port
                    else origin_parts.hostname == host_parts.hostname)
            if not same:
                logger.warning("refused a request from origin %s to host %s", origin, host)
                return web.Response(status=403, text="cross-origin request refused")
    return await handler(request)


@web.middleware
async def _no_cache_scripts(request: web.Request, handler):
    response = await handler(request)
    if request.path.endswith((".js", ".css")):
        response.headers.setdefault("Cache-Control", "no-cache")
    return response


def create_app(engine: Any, *, models_dir: str | Path, input_dir: str | Path, output_dir: str | Path,
               temp_dir: str | Path, user_dir: str | Path, web_root: Any = _AUTO,
               max_upload_size: int = MAX_UPLOAD_SIZE, preview_method: str = "none") -> web.Application:
    """The server application over `engine` (a `diffblocks.server.engine.PromptEngine` built on the same
    input/output/temp folders, which `/view` and the uploads serve). `web_root` is the
    frontend's static folder (default: the installed `comfyui-frontend-package`; None serves no frontend).
    `preview_method` "none" sends no live previews unless a prompt asks for them (ComfyUI's default), "auto"
    sends them. The prompt worker thread starts and stops with the application."""
    folders = {"input": Path(input_dir), "output": Path(output_dir), "temp": Path(temp_dir)}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    root = find_frontend() if web_root is _AUTO else (Path(web_root) if web_root is not None else None)
    features = {"supports_preview_metadata": False, "max_upload_size": max_upload_size}

    queue = PromptQueue(on_change=lambda: hub.broadcast_status())
    hub = SocketHub(status=lambda: {"exec_info": {"queue_remaining": queue.tasks_remaining()}},
                    feature_flags=features)
    worker = PromptWorker(engine, queue, hub, preview_method=preview_method)
    api = ApiRoutes(engine, queue, worker, web_root=root, features=features, models_dir=Path(models_dir))
    files = FileRoutes(folders)
    logs = LogBuffer(hub.send_threadsafe)
    user = UserData(Path(user_dir))

    routes = web.RouteTableDef()
    routes.get("/ws")(hub.handle)
    api.add_routes(routes)
    routes.get("/view")(files.view)
    routes.post("/upload/image")(files.upload_image)
    routes.post("/upload/mask")(files.upload_mask)
    user.add_routes(routes)

    middlewares = [_errors, _log_unrouted, _same_origin, _no_cache_scripts]
    app = web.Application(client_max_size=max_upload_size, middlewares=middlewares)
    app.router.add_routes([web.route(r.method, "/api" + r.path, r.handler) for r in routes])
    app.router.add_routes(routes)
    app.router.add_get("/internal/folder_paths", api.folder_paths)
    logs.add_routes(app)
    add_frontend_routes(app, root)

    async def start(app: web.Application) -> None:
        await hub.start()
        logging.getLogger().addHandler(logs)
        worker.start()
        # build the node list now (it imports every preset): the frontend's first /object_info is then quick
        warm = asyncio.get_running_loop().run_in_executor(None, engine.registry.object_info)
        warm.add_done_callback(lambda f: f.exception() and logger.warning("listing the nodes failed: %s",
                                                                          f.exception()))

    async def stop(app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, worker.stop)
        logging.getLogger().removeHandler(logs)
        await hub.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(hub.close_sockets)
    app.on_cleanup.append(stop)
    app[ENGINE], app[QUEUE], app[WORKER] = engine, queue, worker
    return app
