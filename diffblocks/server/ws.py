"""`/ws?clientId=`: the socket clients listen on, and the fan-out of events from the worker thread.

Messages are ComfyUI's: JSON text frames `{"type": event, "data": {...}}` and binary frames for live previews,
`>I` event type (1, PREVIEW_IMAGE) + `>I` image type (1 JPEG, 2 PNG) + the encoded image. An event goes to one
client (`sid`, the `client_id` a prompt was queued with) or, with `sid=None`, to every connected client.

The worker thread calls `send_threadsafe`; the message is handed to the event loop, which writes it to the
sockets in order from one task. A socket that fails to write is logged and dropped, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import struct
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

logger = logging.getLogger(__name__)

__all__ = ["PREVIEW_IMAGE", "SocketHub", "encode_preview"]

PREVIEW_IMAGE = 1  # ComfyUI's BinaryEventTypes.PREVIEW_IMAGE
_IMAGE_TYPES = {"JPEG": 1, "PNG": 2}


def encode_preview(image: Any, fmt: str = "PNG", max_size: int | None = 512) -> bytes:
    """The binary frame of a PIL preview image: event type, image type, then the encoded image."""
    from PIL import ImageOps

    if max_size is not None and max(image.size) > max_size:
        image = ImageOps.contain(image, (max_size, max_size))
    if fmt == "JPEG" and image.mode != "RGB":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    buffer.write(struct.pack(">I", PREVIEW_IMAGE))
    buffer.write(struct.pack(">I", _IMAGE_TYPES[fmt]))
    image.save(buffer, format=fmt, quality=95, compress_level=1)
    return buffer.getvalue()


class SocketHub:
    """Connected sockets by client id, and an ordered outbox the event loop drains."""

    def __init__(self, status: Callable[[], dict], feature_flags: dict) -> None:
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self._status = status
        self._feature_flags = feature_flags
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        # the node the running prompt is on, and its client: a reconnecting client is told it again
        self.running_client: str | None = None
        self.last_node: str | None = None

    # -- lifecycle (aiohttp on_startup / on_cleanup) -------------------------------------------------------
    async def start(self, app: web.Application | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._outbox = asyncio.Queue()
        self._task = asyncio.create_task(self._drain())

    async def close_sockets(self, app: web.Application | None = None) -> None:
        """Close every client socket (on shutdown, before aiohttp waits for open connections to end)."""
        for ws in list(self.sockets.values()):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")

    async def stop(self, app: web.Application | None = None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.close_sockets()

    # -- sending ------------------------------------------------------------------------------------------
    def send_threadsafe(self, event: str | int, data: Any, sid: str | None = None) -> None:
        """Queue a message from any thread (a JSON event, or `bytes` for a binary frame)."""
        if self._loop is None or self._outbox is None or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._outbox.put_nowait, (event, data, sid))

    async def send(self, event: str, data: Any, sid: str | None = None) -> None:
        """Send now, from the event loop."""
        await self._write(event, data, sid)

    async def _drain(self) -> None:
        assert self._outbox is not None
        while True:
            event, data, sid = await self._outbox.get()
            try:
                await self._write(event, data, sid)
            except Exception:  # a bad message must not stop the fan-out
                logger.exception("could not send the %r event", event)

    async def _write(self, event: str | int, data: Any, sid: str | None) -> None:
        if isinstance(data, (bytes, bytearray)):
            payload: Any = bytes(data)
        else:
            payload = json.dumps({"type": event, "data": data})
        targets = list(self.sockets.items()) if sid is None else [(sid, self.sockets.get(sid))]
        for client, ws in targets:
            if ws is None or ws.closed:
                continue
            try:
                if isinstance(payload, bytes):
                    await ws.send_bytes(payload)
                else:
                    await ws.send_str(payload)
            except (ConnectionError, RuntimeError) as exc:
                logger.warning("dropping client %s: %s", client, exc)
                self.sockets.pop(client, None)

    def broadcast_status(self) -> None:
        self.send_threadsafe("status", {"status": self._status()})

    # -- the socket ---------------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "") or uuid.uuid4().hex
        old = self.sockets.pop(sid, None)  # a reconnect replaces its previous socket
        if old is not None and not old.closed:
            await old.close()
        self.sockets[sid] = ws
        try:
            await ws.send_str(json.dumps({"type": "status", "data": {"status": self._status(), "sid": sid}}))
            if self.running_client == sid and self.last_node is not None:
                await ws.send_str(json.dumps({"type": "executing", "data": {"node": self.last_node}}))
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._client_message(ws, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    logger.warning("socket of client %s closed with %s", sid, ws.exception())
        finally:
            if self.sockets.get(sid) is ws:
                del self.sockets[sid]
        return ws

    async def _client_message(self, ws: web.WebSocketResponse, text: str) -> None:
        """Clients send their feature flags first; the server answers with its own (as ComfyUI does)."""
        try:
            message = json.loads(text)
        except ValueError:
            logger.warning("ignoring a socket message that is not JSON: %.80r", text)
            return
        if isinstance(message, dict) and message.get("type") == "feature_flags":
            await ws.send_str(json.dumps({"type": "feature_flags", "data": self._feature_flags}))
