"""The server's log for the frontend's Console panel (ComfyUI's `/internal/logs` routes and `logs` event).

A `logging` handler on the root logger keeps the last `capacity` records as `{"t": time, "m": message}`
entries; `GET /internal/logs` answers them as text, `GET /internal/logs/raw` as entries with the terminal
size, and a client that subscribes (`PATCH /internal/logs/subscribe {"clientId", "enabled"}`) gets each new
record as a `logs` socket event.
"""

from __future__ import annotations

import collections
import datetime
import logging
import shutil
import threading
from typing import Any

from aiohttp import web

from .bodies import json_object

__all__ = ["LogBuffer"]


class LogBuffer(logging.Handler):
    def __init__(self, send: Any, capacity: int = 300) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.entries: collections.deque[dict] = collections.deque(maxlen=capacity)
        self.subscribers: set[str] = set()
        self._send = send  # SocketHub.send_threadsafe
        self._local = threading.local()

    @staticmethod
    def size() -> dict:
        cols, rows = shutil.get_terminal_size()
        return {"cols": cols, "row": rows}

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False):  # a record logged while sending one is kept, not re-sent
            return
        self._local.busy = True
        try:
            stamp = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat()
            entry = {"t": stamp, "m": self.format(record) + "\n"}
            self.entries.append(entry)
            for client in list(self.subscribers):
                self._send("logs", {"entries": [entry], "size": self.size()}, client)
        except Exception:
            self.handleError(record)
        finally:
            self._local.busy = False

    # -- routes -------------------------------------------------------------------------------------------
    async def get_text(self, request: web.Request) -> web.Response:
        return web.Response(text="".join(entry["m"] for entry in list(self.entries)))

    async def get_raw(self, request: web.Request) -> web.Response:
        return web.json_response({"entries": list(self.entries), "size": self.size()})

    async def subscribe(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        client = body.get("clientId")
        if not client:
            return web.Response(status=400, text="expected {'clientId': ..., 'enabled': true|false}")
        if body.get("enabled"):
            self.subscribers.add(str(client))
        else:
            self.subscribers.discard(str(client))
        return web.Response(status=200)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/internal/logs", self.get_text)
        app.router.add_get("/internal/logs/raw", self.get_raw)
        app.router.add_patch("/internal/logs/subscribe", self.subscribe)
