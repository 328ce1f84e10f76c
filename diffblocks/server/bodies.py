"""JSON request bodies for the server's routes: a body that is not what the route takes is a 400 with ComfyUI's
error shape (`{"error": {"type", "message", "details", "extra_info"}, "node_errors": {}}`), never a 500."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

__all__ = ["bad_request", "json_body", "json_object"]


def bad_request(kind: str, message: str) -> web.HTTPBadRequest:
    body = {"error": {"type": kind, "message": message, "details": "", "extra_info": {}}, "node_errors": {}}
    return web.HTTPBadRequest(text=json.dumps(body), content_type="application/json")


async def json_body(request: web.Request, default: Any = None) -> Any:
    """The request's JSON body (`default` when empty); a body that is not JSON is a 400."""
    text = await request.text()
    if not text.strip():
        return default
    try:
        return json.loads(text)
    except ValueError as exc:
        raise bad_request("invalid_json", f"the request body is not JSON: {exc}") from exc


async def json_object(request: web.Request) -> dict:
    """The request's JSON object body (`{}` when empty); anything else is a 400."""
    body = await json_body(request, {})
    if not isinstance(body, dict):
        raise bad_request("invalid_json", f"expected a JSON object, got {type(body).__name__}")
    return body
