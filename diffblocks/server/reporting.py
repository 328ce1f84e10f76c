"""What one prompt's run tells the clients and the history: ComfyUI's socket events, built from the engine's hooks.

Per prompt, as ComfyUI's execution.py sends them: `execution_start`, `execution_cached` (nodes whose outputs came
from the cache), per node `executing`, `progress` (each step), binary previews and `executed` (its UI output),
`progress_state` (every node's state so far: running with its step, finished, error; the frontend draws its node
progress from it), and at the end `execution_success`, `execution_error` (the node that raised, its exception
and traceback) or `execution_interrupted`. The start and end events, stamped with a timestamp, are also kept as
the history entry's `status.messages`.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from .ws import SocketHub, encode_preview

logger = logging.getLogger(__name__)

__all__ = ["PromptReport"]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _jsonable(value: Any) -> Any:
    """Inputs as JSON can carry them: plain values as they are, anything else as its repr."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


class PromptReport:
    """The events of one prompt's run (to its client, or everyone when it has none) and its history record."""

    def __init__(self, hub: SocketHub, prompt_id: str, prompt: dict, client_id: str | None,
                 previews: bool) -> None:
        self.hub = hub
        self.prompt_id = prompt_id
        self.prompt = prompt
        self.client_id = client_id
        self.previews = previews
        self.messages: list[list] = []  # the history's status.messages
        self.done: list[str] = []  # nodes finished (cached or run): ComfyUI's "executed" list
        self.ui_outputs: dict[str, Any] = {}
        self.meta: dict[str, dict] = {}
        self.node: str | None = None  # the node running now
        self._states: dict[str, dict] = {}

    # -- sending ------------------------------------------------------------------------------------------
    def send(self, event: str, data: Any) -> None:
        self.hub.send_threadsafe(event, data, self.client_id)

    def _message(self, event: str, data: dict) -> None:
        data = {"prompt_id": self.prompt_id, **data, "timestamp": _now_ms()}
        self.messages.append([event, data])
        self.send(event, data)

    def _node_type(self, node_id: str | None) -> str | None:
        node = self.prompt.get(node_id) if node_id is not None else None
        return node.get("class_type") if isinstance(node, dict) else None

    def _set_state(self, node_ids, state: str, value: float | None = None, maximum: float | None = None) -> None:
        for node_id in node_ids:
            entry = self._states.setdefault(node_id, {
                "value": 0, "max": 1, "node_id": node_id, "prompt_id": self.prompt_id,
                "display_node_id": node_id, "parent_node_id": None, "real_node_id": node_id})
            entry["state"] = state
            if maximum is not None:
                entry["value"], entry["max"] = value, maximum
            elif state == "finished":
                entry["value"] = entry["max"]
        self.send("progress_state", {"prompt_id": self.prompt_id,
                                     "nodes": {k: dict(v) for k, v in self._states.items()}})

    def _finish_current(self) -> None:
        if self.node is not None and self.node not in self.done:
            self.done.append(self.node)
            self._set_state([self.node], "finished")

    # -- the engine's hooks -------------------------------------------------------------------------------
    def hooks(self) -> Any:
        from .engine import ExecutionHooks

        return ExecutionHooks(on_cached=self.on_cached, on_executing=self.on_executing,
                              on_progress=self.on_progress, on_preview=self.on_preview if self.previews else None,
                              on_executed=self.on_executed)

    def on_cached(self, node_ids) -> None:
        node_ids = [str(n) for n in node_ids]
        self.done.extend(node_ids)
        self._message("execution_cached", {"nodes": node_ids})
        if node_ids:
            self._set_state(node_ids, "finished")

    def on_executing(self, node_id) -> None:
        self._finish_current()
        self.node = None if node_id is None else str(node_id)
        self.hub.last_node = self.node
        if self.node is not None:  # "node": null is sent once the prompt is in the history (see finish)
            self.send("executing", {"node": self.node, "display_node": self.node, "prompt_id": self.prompt_id})
            self._set_state([self.node], "running")

    def on_progress(self, node_id, value, maximum) -> None:
        node_id = str(node_id)
        self.send("progress", {"value": value, "max": maximum, "prompt_id": self.prompt_id, "node": node_id})
        self._set_state([node_id], "running", value, maximum)

    def on_preview(self, node_id, image) -> None:
        try:
            self.send("preview", encode_preview(image))
        except Exception:  # a preview that cannot be encoded is skipped, the run goes on
            logger.exception("prompt %s: could not encode the preview of node %s", self.prompt_id, node_id)

    def on_executed(self, node_id, ui_output) -> None:
        node_id = str(node_id)
        if node_id not in self.done:
            self.done.append(node_id)
            self._set_state([node_id], "finished")
        if ui_output:
            self.ui_outputs[node_id] = ui_output
            self.meta[node_id] = {"node_id": node_id, "display_node": node_id, "parent_node": None,
                                  "real_node_id": node_id}
        self.send("executed", {"node": node_id, "display_node": node_id, "output": ui_output,
                               "prompt_id": self.prompt_id})

    # -- how the run ended --------------------------------------------------------------------------------
    def started(self) -> None:
        self._message("execution_start", {})

    def succeeded(self) -> None:
        self._finish_current()
        self._message("execution_success", {})

    def interrupted(self) -> None:
        logger.info("prompt %s interrupted at node %s", self.prompt_id, self.node)
        self._message("execution_interrupted", {"node_id": self.node, "node_type": self._node_type(self.node),
                                                "executed": list(self.done)})

    def failed(self, exc: Any) -> None:
        """A node raised (the engine's NodeExecutionError)."""
        logger.warning("prompt %s failed in node %s (%s): %s", self.prompt_id, exc.node_id, exc.class_type,
                       exc.exception_message)
        self._set_state([str(exc.node_id)], "error")
        tb = exc.traceback
        self._message("execution_error", {
            "node_id": str(exc.node_id), "node_type": exc.class_type,
            "executed": list(getattr(exc, "executed", None) or self.done),
            "exception_message": exc.exception_message, "exception_type": exc.exception_type,
            "traceback": tb if isinstance(tb, list) else str(tb or "").splitlines(keepends=True),
            "current_inputs": _jsonable(exc.current_inputs), "current_outputs": {}})

    def crashed(self, exc: BaseException) -> None:
        """A failure outside any node (an engine bug): reported like a node error, on the node running."""
        logger.error("prompt %s failed outside a node", self.prompt_id, exc_info=exc)
        self._message("execution_error", {
            "node_id": self.node, "node_type": self._node_type(self.node), "executed": list(self.done),
            "exception_message": str(exc), "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "traceback": traceback.format_exception(exc), "current_inputs": {}, "current_outputs": {}})

    def status(self, success: bool) -> dict:
        return {"status_str": "success" if success else "error", "completed": success, "messages": self.messages}

    def finish(self) -> None:
        """After the prompt is in the history: ComfyUI's end-of-prompt signal, `executing` with node null."""
        self.send("executing", {"node": None, "prompt_id": self.prompt_id})
