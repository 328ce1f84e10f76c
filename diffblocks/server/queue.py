"""The server's one prompt queue and its history, in ComfyUI's shapes.

A queued prompt is the tuple ComfyUI keeps, `(number, prompt_id, prompt, extra_data, outputs_to_execute)`; it is
what `GET /queue` lists (as JSON arrays) and what a history entry keeps under `"prompt"`. Pending prompts sit in a
heap ordered by `number` (`"front": true` queues a negative number, so it runs first). One worker thread takes
them one at a time (`get`), and hands each back with `task_done`, which moves it into the history:
`{"prompt": [...], "outputs": {node_id: ui_output}, "status": {"status_str", "completed", "messages"},
"meta": {node_id: {...}}}`. History keeps the newest `max_history` entries.

Everything is guarded by one lock; `on_change` is called (outside the lock) whenever the number of remaining
tasks may have changed, so the server can broadcast the `status` event.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_HISTORY", "PromptQueue", "QueueItem"]

MAX_HISTORY = 10000  # ComfyUI's MAXIMUM_HISTORY_SIZE

QueueItem = tuple  # (number, prompt_id, prompt, extra_data, outputs_to_execute)


class PromptQueue:
    """Pending prompts (a heap by number), the running ones, and the finished ones (history)."""

    def __init__(self, on_change: Callable[[], Any] | None = None, max_history: int = MAX_HISTORY) -> None:
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, QueueItem]] = []
        self._tie = itertools.count()  # equal numbers keep their queueing order
        self._running: dict[int, QueueItem] = {}
        self._task_ids = itertools.count()
        self._history: OrderedDict[str, dict] = OrderedDict()
        self._max_history = max_history
        self._on_change = on_change
        self._closed = False

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    # -- the queue ----------------------------------------------------------------------------------------
    def put(self, item: QueueItem) -> None:
        with self._lock:
            heapq.heappush(self._heap, (item[0], next(self._tie), item))
            self._lock.notify()
        self._changed()

    def get(self, timeout: float | None = None) -> tuple[QueueItem, int] | None:
        """The next prompt and its task id (marked running), or None on timeout or after `close()`."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._heap or self._closed, timeout):
                return None
            if self._closed:
                return None
            _, _, item = heapq.heappop(self._heap)
            task_id = next(self._task_ids)
            self._running[task_id] = item
        self._changed()
        return item, task_id

    def close(self) -> None:
        """Wake the worker so it can stop; `get` returns None from now on."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def task_done(self, task_id: int, outputs: dict, status: dict, meta: dict | None = None) -> None:
        """Move a running prompt into the history with its outputs and status."""
        with self._lock:
            item = self._running.pop(task_id)
            while len(self._history) >= self._max_history:
                self._history.popitem(last=False)
            self._history[item[1]] = {"prompt": item, "outputs": outputs, "status": status, "meta": meta or {}}
        self._changed()

    def current(self) -> tuple[list[QueueItem], list[QueueItem]]:
        """(running, pending) copies; pending in the order they will run."""
        with self._lock:
            running = [copy.deepcopy(item) for item in self._running.values()]
            pending = [copy.deepcopy(entry[2]) for entry in sorted(self._heap)]
        return running, pending

    def running_ids(self) -> list[str]:
        with self._lock:
            return [item[1] for item in self._running.values()]

    def tasks_remaining(self) -> int:
        with self._lock:
            return len(self._heap) + len(self._running)

    def wipe_queue(self) -> None:
        with self._lock:
            self._heap.clear()
        self._changed()

    def delete_pending(self, prompt_id: str) -> bool:
        """Remove a pending prompt; True when one was removed (a running prompt is not touched)."""
        with self._lock:
            kept = [entry for entry in self._heap if entry[2][1] != prompt_id]
            removed = len(kept) != len(self._heap)
            if removed:
                self._heap = kept
                heapq.heapify(self._heap)
        if removed:
            self._changed()
        return removed

    # -- the history ----------------------------------------------------------------------------------------
    def history(self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1) -> dict:
        """`{prompt_id: entry}` (copies): one prompt's, or the newest `max_items` (all when None), oldest first;
        `offset` skips that many from the oldest (ComfyUI's default -1 counts back from the newest)."""
        with self._lock:
            if prompt_id is not None:
                entry = self._history.get(prompt_id)
                return {} if entry is None else {prompt_id: copy.deepcopy(entry)}
            keys = list(self._history)
            if offset < 0 and max_items is not None:
                offset = max(0, len(keys) - max_items)
            keys = keys[max(offset, 0):]
            if max_items is not None:
                keys = keys[:max_items]
            return {key: copy.deepcopy(self._history[key]) for key in keys}

    def wipe_history(self) -> None:
        with self._lock:
            self._history.clear()

    def delete_history(self, prompt_id: str) -> None:
        with self._lock:
            self._history.pop(prompt_id, None)
