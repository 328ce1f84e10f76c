"""What the frontend stores on the server: settings, users, and user data files (saved workflows, templates).

One user, `default` (ComfyUI's single-user mode): its files live in `<user_dir>/default/`, settings in
`<user_dir>/default/comfy.settings.json`. Routes and answers follow ComfyUI's app/user_manager.py and
app/app_settings.py: `GET/POST /settings[/{id}]`, `GET/POST /users`, `GET /userdata?dir=`, `GET /v2/userdata`,
`GET/POST/DELETE /userdata/{file}`, `POST /userdata/{file}/move/{dest}`. Paths stay inside the user's folder.
Multi-user setups are not supported: `POST /users` answers 400 saying so.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import shutil
import tempfile
import threading
from pathlib import Path
from urllib.parse import unquote

from aiohttp import web

from .bodies import json_body, json_object
from .files import inside

logger = logging.getLogger(__name__)

__all__ = ["UserData"]

USER = "default"


def _file_info(path: Path, root: Path) -> dict:
    stat = path.stat()
    return {"path": path.relative_to(root).as_posix(), "size": stat.st_size,
            "modified": int(stat.st_mtime * 1000), "created": int(stat.st_ctime * 1000)}


class UserData:
    def __init__(self, user_dir: Path) -> None:
        self.root = Path(user_dir) / USER
        for folder in ("workflows", "subgraphs"):  # where the frontend saves workflows and subgraph blueprints
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self._settings_lock = threading.Lock()

    # -- settings -----------------------------------------------------------------------------------------
    @property
    def settings_file(self) -> Path:
        return self.root / "comfy.settings.json"

    def _read_settings(self) -> dict:
        try:
            return json.loads(self.settings_file.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            logger.warning("%s is not valid JSON; starting from empty settings", self.settings_file)
            return {}

    def _write_settings(self, settings: dict) -> None:
        _atomic_write(self.settings_file, json.dumps(settings, indent=4).encode())

    async def get_settings(self, request: web.Request) -> web.Response:
        return web.json_response(self._read_settings())

    async def get_setting(self, request: web.Request) -> web.Response:
        return web.json_response(self._read_settings().get(request.match_info["id"]))

    async def post_settings(self, request: web.Request) -> web.Response:
        new = await json_object(request)
        with self._settings_lock:
            settings = self._read_settings()
            settings.update(new)
            self._write_settings(settings)
        return web.Response(status=200)

    async def post_setting(self, request: web.Request) -> web.Response:
        value = await json_body(request)
        with self._settings_lock:
            settings = self._read_settings()
            settings[request.match_info["id"]] = value
            self._write_settings(settings)
        return web.Response(status=200)

    # -- users --------------------------------------------------------------------------------------------
    async def get_users(self, request: web.Request) -> web.Response:
        return web.json_response({"storage": "server", "migrated": self.root.exists()})

    async def post_users(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "this server has one user ('default'); multi-user mode is not "
                                           "supported"}, status=400)

    # -- user data files ----------------------------------------------------------------------------------
    def _path(self, name: str | None) -> Path | None:
        if not name:
            return None
        return inside(self.root, unquote(name) if "%" in name else name)

    async def list_files(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        directory = query.get("dir", "")
        if not directory:
            return web.Response(status=400, text="Directory not provided")
        path = self._path(directory)
        if path is None:
            return web.Response(status=403, text="Invalid directory")
        if not path.exists():
            return web.Response(status=404, text="Directory not found")
        recurse = query.get("recurse", "").lower() == "true"
        full_info = query.get("full_info", "").lower() == "true"
        split = query.get("split", "").lower() == "true"
        files = sorted(p for p in (path.rglob("*") if recurse else path.glob("*")) if p.is_file())
        out: list = []
        for file in files:
            if full_info:
                out.append(_file_info(file, path))
            else:
                rel = file.relative_to(path).as_posix()
                out.append([rel, *rel.split("/")] if split else rel)
        return web.json_response(out)

    async def list_v2(self, request: web.Request) -> web.Response:
        rel = unquote(request.rel_url.query.get("path", ""))
        target = self._path(rel) if rel else self.root
        if target is None:
            return web.Response(status=400, text="Invalid path requested")
        if not target.exists():
            return web.json_response([]) if target == self.root else web.Response(status=404, text="Requested path not found")
        if not target.is_dir():
            return web.Response(status=400, text="Requested path is not a directory")
        out = []
        for item in target.rglob("*"):
            entry = {"name": item.name, "path": item.relative_to(self.root).as_posix(),
                     "type": "directory" if item.is_dir() else "file"}
            if item.is_file():
                stat = item.stat()
                entry.update(size=stat.st_size, modified=stat.st_mtime)
            out.append(entry)
        out.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
        return web.json_response(out)

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        path = self._path(request.match_info.get("file"))
        if path is None:
            return web.Response(status=403)
        if not path.is_file():
            return web.Response(status=404)
        # user files never render inline in the app's origin (stored XSS); user.css is the one stylesheet
        if path == self.root / "user.css":
            content_type, disposition = "text/css", "inline"
        else:
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if content_type.startswith(("text/html", "application/javascript", "text/javascript", "image/svg")):
                content_type = "application/octet-stream"
            disposition = "attachment"
        return web.FileResponse(path, headers={"Content-Type": content_type, "X-Content-Type-Options": "nosniff",
                                               "Content-Disposition": disposition})

    async def post_file(self, request: web.Request) -> web.Response:
        path = self._path(request.match_info.get("file"))
        if path is None or path == self.root:
            return web.Response(status=403)
        query = request.rel_url.query
        if query.get("overwrite", "true") == "false" and path.exists():
            return web.Response(status=409, text="File already exists")
        body = await request.read()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, body)
        except OSError as exc:
            logger.warning("could not save %s: %s", path, exc)
            return web.Response(status=400, text=f"could not save the file: {exc.strerror}")
        return web.json_response(self._answer(path, query))

    async def delete_file(self, request: web.Request) -> web.Response:
        path = self._path(request.match_info.get("file"))
        if path is None or path == self.root:
            return web.Response(status=403)
        if not path.is_file():
            return web.Response(status=404)
        path.unlink()
        return web.Response(status=204)

    async def move_file(self, request: web.Request) -> web.Response:
        source = self._path(request.match_info.get("file"))
        dest = self._path(request.match_info.get("dest"))
        if source is None or dest is None or dest == self.root:
            return web.Response(status=403)
        if not source.is_file():
            return web.Response(status=404)
        query = request.rel_url.query
        if query.get("overwrite", "true") == "false" and dest.exists():
            return web.Response(status=409, text="File already exists")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, dest)
        return web.json_response(self._answer(dest, query))

    def _answer(self, path: Path, query) -> dict | str:
        if query.get("full_info", "false").lower() == "true":
            return _file_info(path, self.root)
        return path.relative_to(self.root).as_posix()

    def add_routes(self, routes: web.RouteTableDef) -> None:
        routes.get("/settings")(self.get_settings)
        routes.post("/settings")(self.post_settings)
        routes.get("/settings/{id}")(self.get_setting)
        routes.post("/settings/{id}")(self.post_setting)
        routes.get("/users")(self.get_users)
        routes.post("/users")(self.post_users)
        routes.get("/userdata")(self.list_files)
        routes.get("/v2/userdata")(self.list_v2)
        routes.get("/userdata/{file}")(self.get_file)
        routes.post("/userdata/{file}")(self.post_file)
        routes.delete("/userdata/{file}")(self.delete_file)
        routes.post("/userdata/{file}/move/{dest}")(self.move_file)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
