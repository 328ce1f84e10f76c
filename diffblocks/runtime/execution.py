"""How one pipeline call runs its blocks: interrupt checks, progress events, the block output cache, tracing.

`ModularPipeline.__call__` installs an `Executor` as the current runner (see `blocks/trace.py`): every
composite runs its children through `Executor.run`, and every loop's `progress_bar` iterates through
`Executor.steps`. That is the single execution path Python callers and the node server share:

* interrupt: `Executor.run` (before each block) and `Executor.steps` (before each loop step) raise `Interrupted`
  once the pipeline's `interrupt_event` is set, so a call stops within one denoise step;
* progress: handlers receive a `ProgressEvent` when a block starts and finishes and after each loop step;
* cache: leaf blocks are looked up in / stored into the pipeline's `BlockCache` when one is enabled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..blocks.trace import Tracer, reset_runner, use_runner

logger = logging.getLogger(__name__)

__all__ = ["Executor", "Interrupted", "ProgressEvent", "ProgressHandler"]


class Interrupted(RuntimeError):
    """The running pipeline call was stopped by `pipe.interrupt()` (or its `interrupt_event`)."""


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report. `kind` is "block_start", "block_end" or "step"; `path` the dotted block path
    (e.g. "StableDiffusionAutoBlocks.denoise"); for "step", `step` steps of `total` are done; `seconds` is the
    block's wall time on "block_end", and `cached` whether its outputs came from the block cache (True), it ran
    after a cache miss (False), or the cache was not consulted (None: cache off, a composite, or a block that is
    never cached)."""

    kind: str
    path: str
    block: str
    step: int | None = None
    total: int | None = None
    seconds: float | None = None
    cached: bool | None = None


ProgressHandler = Callable[[ProgressEvent], Any]


class Executor:
    """Runs one pipeline call's blocks (installed for the duration of the call; not reused across calls)."""

    def __init__(self, pipeline: Any, event: threading.Event, handlers: Iterable[ProgressHandler] = (),
                 cache: Any = None, tracer: Tracer | None = None) -> None:
        self.pipeline = pipeline
        self.event = event
        self.handlers = tuple(handlers)
        self.cache = cache
        self.tracer = tracer
        self._path: list[str] = []

    # -- installing ---------------------------------------------------------------------------------
    def __enter__(self) -> Executor:
        self._token = use_runner(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        reset_runner(self._token)

    # -- the hooks composites and loops call --------------------------------------------------------------
    def check(self, where: str) -> None:
        if self.event.is_set():
            raise Interrupted(f"interrupted {where} (pipe.interrupt() was called)")

    def _emit(self, event: ProgressEvent) -> None:
        for handler in self.handlers:
            handler(event)

    def run(self, name: str, block: Any, components: Any, state: Any):
        self._path.append(name)
        path = ".".join(self._path)
        try:
            self.check(f"before block {path!r}")
            if self.handlers:
                self._emit(ProgressEvent("block_start", path, type(block).__name__))
            start = time.perf_counter()
            cached = None
            cache = self.cache
            if cache is not None and cache.applies_to(block):
                cached, result = cache.run(block, components, state, self._call, name)
            else:
                result = self._call(name, block, components, state)
            if self.handlers:
                self._emit(ProgressEvent("block_end", path, type(block).__name__,
                                         seconds=time.perf_counter() - start, cached=cached))
            return result
        finally:
            self._path.pop()

    def _call(self, name: str, block: Any, components: Any, state: Any):
        if self.tracer is not None:
            return self.tracer.run(name, block, components, state)
        return block(components, state)

    def steps(self, block: Any, iterable: Iterable[Any]) -> Iterator[Any]:
        """Wraps a loop's (tqdm) iterable: interrupt check before each step, a "step" event after it."""
        path = ".".join(self._path)
        name = type(block).__name__
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
        is_set = self.event.is_set
        try:
            for i, item in enumerate(iterable):
                if is_set():  # `check` inlined: this runs every step
                    self.check(f"at step {i + 1}/{total} of {path!r}")
                yield item
                if self.handlers:
                    self._emit(ProgressEvent("step", path, name, step=i + 1, total=total))
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
