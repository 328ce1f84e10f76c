"""The one worker thread: takes prompts off the queue, runs them on the engine, reports over the socket.

Per prompt it sends, as ComfyUI's execution.py does: `execution_start`, `execution_cached` (nodes whose outputs
came from the cache), then per node `executing`, `progress` (each step), binary previews and `executed` (its UI
output), and at the end `execution_success`, `execution_error` (the node that raised, its exception and
traceback) or `execution_interrupted`; then the prompt moves into the history and `executing` with
`node: null` says the client's prompt is done. Events go to the prompt's `client_id`, or to every client when it
has none. No error in a prompt stops the worker: the next prompt runs.

Live previews follow ComfyUI's preview method: the server's (`--preview-method`, "none" by default as in
ComfyUI), or the prompt's own `extra_data.preview_method` (the frontend's "Live preview method" setting); any
method but "none" sends the engine's previews (a latent-to-RGB projection per step).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any

from .queue import PromptQueue
from .ws import SocketHub, encode_preview

logger = logging.getLogger(__name__)

__all__ = ["PromptWorker"]


def _now_ms() -> int:
    return int(time.time() * 1000)


class PromptWorker:
    def __init__(self, engine: Any, queue: PromptQueue, hub: SocketHub, preview_method: str = "none") -> None:
        self.engine = engine
        self.preview_method = preview_method
        self.queue = queue
        self.hub = hub
        self._thread: threading.Thread | None = None
        self._running_id: str | None = None
        self._lock = threading.Lock()
        self._stopping = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="diffblocks-prompt-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self.queue.close()
        self.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (only if it is `prompt_id`, when given); True when one was running."""
        with self._lock:
            running = self._running_id
            if running is None or (prompt_id is not None and prompt_id != running):
                return False
            self.engine.interrupt()
            return True

    def _loop(self) -> None:
        while not self._stopping:
            got = self.queue.get(timeout=1.0)
            if got is None:
                continue
            item, task_id = got
            try:
                self._run(item, task_id)
            except Exception:  # the worker itself must survive whatever a prompt does
                logger.exception("prompt %s: unexpected failure in the worker", item[1])

    def _run(self, item: tuple, task_id: int) -> None:
        from ..runtime.execution import Interrupted
        from .engine import ExecutionHooks, NodeExecutionError

        _, prompt_id, prompt, extra_data, outputs_to_execute = item
        sid = extra_data.get("client_id")
        messages: list[list] = []
        done: list[str] = []  # nodes finished (cached or run), ComfyUI's "executed" list
        ui_outputs: dict[str, Any] = {}
        meta: dict[str, dict] = {}
        current: dict[str, str | None] = {"node": None}

        def send(event: str, data: Any) -> None:
            self.hub.send_threadsafe(event, data, sid)

        def message(event: str, data: dict) -> None:
            data = {**data, "timestamp": _now_ms()}
            messages.append([event, data])
            send(event, data)

        def node_type(node_id: str | None) -> str | None:
            node = prompt.get(node_id) if node_id is not None else None
            return node.get("class_type") if isinstance(node, dict) else None

        def on_cached(node_ids) -> None:
            node_ids = [str(n) for n in node_ids]
            done.extend(node_ids)
            message("execution_cached", {"nodes": node_ids, "prompt_id": prompt_id})

        def on_executing(node_id) -> None:
            previous = current["node"]
            if previous is not None and previous not in done:
                done.append(previous)
            current["node"] = None if node_id is None else str(node_id)
            self.hub.last_node = current["node"]
            if node_id is not None:  # "node": null is sent once the prompt is in the history (below)
                send("executing", {"node": current["node"], "display_node": current["node"],
                                   "prompt_id": prompt_id})

        def on_progress(node_id, value, maximum) -> None:
            send("progress", {"value": value, "max": maximum, "prompt_id": prompt_id, "node": str(node_id)})

        def on_preview(node_id, image) -> None:
            try:
                send("preview", encode_preview(image))
            except Exception:  # a preview that cannot be encoded is skipped, the run goes on
                logger.exception("prompt %s: could not encode the preview of node %s", prompt_id, node_id)

        def on_executed(node_id, ui_output) -> None:
            node_id = str(node_id)
            if node_id not in done:
                done.append(node_id)
            if ui_output:
                ui_outputs[node_id] = ui_output
                meta[node_id] = {"node_id": node_id, "display_node": node_id, "parent_node": None,
                                 "real_node_id": node_id}
            send("executed", {"node": node_id, "display_node": node_id, "output": ui_output,
                              "prompt_id": prompt_id})

        method = extra_data.get("preview_method") or "default"
        previews = (self.preview_method if method == "default" else method) != "none"
        hooks = ExecutionHooks(on_cached=on_cached, on_executing=on_executing, on_progress=on_progress,
                               on_preview=on_preview if previews else None, on_executed=on_executed)
        with self._lock:
            self._running_id = prompt_id
            self.hub.running_client = sid
        message("execution_start", {"prompt_id": prompt_id})
        success = False
        try:
            self.engine.execute(prompt_id, prompt, outputs_to_execute, hooks, extra_data=extra_data)
            success = True
            message("execution_success", {"prompt_id": prompt_id})
        except Interrupted:
            logger.info("prompt %s interrupted at node %s", prompt_id, current["node"])
            message("execution_interrupted", {"prompt_id": prompt_id, "node_id": current["node"],
                                              "node_type": node_type(current["node"]), "executed": list(done)})
        except NodeExecutionError as exc:
            logger.warning("prompt %s failed in node %s (%s): %s", prompt_id, exc.node_id, exc.class_type,
                           exc.exception_message)
            tb = exc.traceback
            message("execution_error", {
                "prompt_id": prompt_id, "node_id": str(exc.node_id), "node_type": exc.class_type,
                "executed": list(getattr(exc, "executed", None) or done),
                "exception_message": exc.exception_message, "exception_type": exc.exception_type,
                "traceback": tb if isinstance(tb, list) else str(tb or "").splitlines(keepends=True),
                "current_inputs": _jsonable(exc.current_inputs), "current_outputs": {}})
        except Exception as exc:  # a failure outside any node (an engine bug): reported, never fatal
            logger.exception("prompt %s failed outside a node", prompt_id)
            message("execution_error", {
                "prompt_id": prompt_id, "node_id": current["node"], "node_type": node_type(current["node"]),
                "executed": list(done), "exception_message": str(exc),
                "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "traceback": traceback.format_exception(exc), "current_inputs": {}, "current_outputs": {}})
        finally:
            with self._lock:
                self._running_id = None
            self.hub.last_node = None
            self.hub.running_client = None
        self.queue.task_done(task_id, ui_outputs,
                             {"status_str": "success" if success else "error", "completed": success,
                              "messages": messages}, meta)
        send("executing", {"node": None, "prompt_id": prompt_id})


def _jsonable(value: Any) -> Any:
    """Inputs as JSON can carry them: plain values as they are, anything else as its repr."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)
