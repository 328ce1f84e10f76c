"""What a user (or the node server) steers a pipeline with: interrupt, progress handlers, the block output cache.

Mixed into `ModularPipeline`; the state lives on the pipeline instance and is created on first use.
"""

from __future__ import annotations

import threading
from typing import Any

from ..blocks.trace import Tracer
from .cache import BlockCache, BlockCacheInfo
from .execution import Executor, ProgressHandler

__all__ = ["SteeringMixin"]


class SteeringMixin:
    # -- interrupt ------------------------------------------------------------------------------------
    @property
    def interrupt_event(self) -> threading.Event:
        """The `threading.Event` running calls watch: setting it stops them within one denoise step
        (`diffblocks.Interrupted`). Each call clears it when it starts. Assign a shared Event to stop several
        pipelines together (a server's global interrupt)."""
        event = self.__dict__.get("_interrupt_event")
        if event is None:
            event = threading.Event()
            object.__setattr__(self, "_interrupt_event", event)
        return event

    @interrupt_event.setter
    def interrupt_event(self, event: threading.Event) -> None:
        if not (hasattr(event, "is_set") and hasattr(event, "set") and hasattr(event, "clear")):
            raise TypeError(f"interrupt_event must be a threading.Event (is_set/set/clear), got {type(event).__name__}")
        object.__setattr__(self, "_interrupt_event", event)

    def interrupt(self) -> None:
        """Stop the running call(s) of this pipeline: they raise `diffblocks.Interrupted` before the next block
        or denoise step. Thread-safe; callable from another thread, a signal handler or a step callback. A call
        started afterwards runs normally."""
        self.interrupt_event.set()

    # -- progress -------------------------------------------------------------------------------------
    def add_progress_handler(self, handler: ProgressHandler) -> ProgressHandler:
        """Call `handler(ProgressEvent)` when a block starts / finishes and after each loop step (besides tqdm).
        Returns the handler (usable as a decorator). An exception from a handler stops the call."""
        if not callable(handler):
            raise TypeError(f"a progress handler must be callable as handler(event), got {type(handler).__name__}")
        handlers = self.__dict__.setdefault("_progress_handlers", [])
        handlers.append(handler)
        return handler

    def remove_progress_handler(self, handler: ProgressHandler) -> None:
        handlers = self.__dict__.get("_progress_handlers", [])
        if handler not in handlers:
            raise ValueError(f"{handler!r} is not a progress handler of this pipeline")
        handlers.remove(handler)

    # -- block output cache ---------------------------------------------------------------------------
    def enable_block_cache(self, max_memory: int | str = "2GB", cache: BlockCache | None = None) -> BlockCache:
        """Reuse block outputs across calls when a block's inputs, components and config are unchanged (see
        runtime/cache.py). `max_memory` bounds the cached tensors' bytes (LRU); pass `cache` to share one
        BlockCache between pipelines. Returns the cache."""
        if cache is None:
            cache = BlockCache(max_memory)
        elif not isinstance(cache, BlockCache):
            raise TypeError(f"enable_block_cache(cache=...) needs a BlockCache, got {type(cache).__name__}")
        object.__setattr__(self, "_block_cache", cache)
        return cache

    def disable_block_cache(self) -> None:
        """Stop caching and drop what this pipeline's cache holds."""
        cache = self.__dict__.get("_block_cache")
        if cache is not None:
            cache.clear()
        object.__setattr__(self, "_block_cache", None)

    def block_cache_info(self) -> BlockCacheInfo:
        """hits, misses, uncached (runs that could not be keyed), bytes, max_memory, entries."""
        cache = self.__dict__.get("_block_cache")
        if cache is None:
            raise RuntimeError("the block cache is not enabled on this pipeline; call pipe.enable_block_cache()")
        return cache.info()

    # -- the executor of one call -------------------------------------------------------------------------
    def _executor(self, tracer: Tracer | None) -> Executor:
        event = self.interrupt_event
        event.clear()
        return Executor(self, event, list(self.__dict__.get("_progress_handlers", ())),
                        cache=self.__dict__.get("_block_cache"), tracer=tracer)

    def _run_block(self, block: Any, state: Any) -> Any:
        """Run one block (`block.run(pipe, ...)`) as a call of this pipeline: per-call scheduler and guider
        copies, interrupt, progress handlers and the block cache, like `pipe(...)`."""
        from .call_components import CallComponents

        components = CallComponents(self)
        try:
            with self._executor(None) as executor:
                _, state = executor.run(type(block).__name__, block, components, state)
        finally:
            components.finish_call()
        return state

    def _run_blocks(self, state: Any, tracer: Tracer | None, components: Any = None) -> Any:
        blocks = self._blocks
        with self._executor(tracer) as executor:
            _, state = executor.run(type(blocks).__name__, blocks, self if components is None else components, state)
        if tracer is not None:
            state.trace = tracer
        return state
