"""The one worker thread: takes prompts off the queue, runs them on the engine, reports over the socket.

Each prompt's events come from a `PromptReport` (reporting.py); once the prompt is in the history, `executing`
with `node: null` says the client's prompt is done. No error in a prompt stops the worker: the next prompt runs.

Live previews follow ComfyUI's preview method: the server's (`--preview-method`, "none" by default as in
ComfyUI), or the prompt's own `extra_data.preview_method` (the frontend's "Live preview method" setting); any
method but "none" sends the engine's previews (a latent-to-RGB projection per step).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .queue import PromptQueue
from .reporting import PromptReport
from .ws import SocketHub

logger = logging.getLogger(__name__)

__all__ = ["PromptWorker"]


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
        self._free: dict[str, bool] = {}  # a pending /free request, handled between prompts

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

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        """Ask the worker to free memory (engine.free) before the next prompt, or within a second when idle."""
        with self._lock:
            self._free["unload_models"] = self._free.get("unload_models", False) or unload_models
            self._free["free_memory"] = self._free.get("free_memory", False) or free_memory

    def _free_if_requested(self) -> None:
        with self._lock:
            request, self._free = self._free, {}
        if request:
            try:
                self.engine.free(**request)
            except Exception:  # never fatal for the worker
                logger.exception("freeing memory failed")

    def _loop(self) -> None:
        while not self._stopping:
            self._free_if_requested()
            got = self.queue.get(timeout=1.0)
            if got is None:
                continue
            item, task_id = got
            self._free_if_requested()  # a /free that came while the worker waited for this prompt
            try:
                self._run(item, task_id)
            except Exception:  # the worker itself must survive whatever a prompt does
                logger.exception("prompt %s: unexpected failure in the worker", item[1])

    def _run(self, item: tuple, task_id: int) -> None:
        from ..runtime.execution import Interrupted
        from .engine import NodeExecutionError

        _, prompt_id, prompt, extra_data, outputs_to_execute = item
        method = extra_data.get("preview_method") or "default"
        previews = (self.preview_method if method == "default" else method) != "none"
        report = PromptReport(self.hub, prompt_id, prompt, extra_data.get("client_id"), previews)
        with self._lock:
            self._running_id = prompt_id
            self.hub.running_client = report.client_id
        report.started()
        success = False
        try:
            self.engine.execute(prompt_id, prompt, outputs_to_execute, report.hooks(), extra_data=extra_data)
            success = True
            report.succeeded()
        except Interrupted:
            report.interrupted()
        except NodeExecutionError as exc:
            report.failed(exc)
        except Exception as exc:  # a failure outside any node (an engine bug): reported, never fatal
            report.crashed(exc)
        finally:
            with self._lock:
                self._running_id = None
            self.hub.last_node = None
            self.hub.running_client = None
        self.queue.task_done(task_id, report.ui_outputs, report.status(success), report.meta)
        report.finish()
