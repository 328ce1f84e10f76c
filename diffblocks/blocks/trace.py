"""Per-block trace of one pipeline call: wall time and peak memory, opt-in so the normal path pays nothing."""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Tracer", "TraceRecord", "current_tracer", "use_runner"]

_TRACER: contextvars.ContextVar[Tracer | None] = contextvars.ContextVar("diffblocks_tracer", default=None)


def current_tracer() -> Tracer | None:
    """The object composites run their children through (`run(name, block, components, state)`): a Tracer, or
    the runtime's executor (interrupt, progress, cache); None on the plain path."""
    return _TRACER.get()


def use_runner(runner: Any) -> contextvars.Token:
    """Install `runner` as the current runner (reset with `_TRACER.reset(token)` via `reset_runner`)."""
    return _TRACER.set(runner)


def reset_runner(token: contextvars.Token) -> None:
    _TRACER.reset(token)


@dataclass
class TraceRecord:
    path: str
    block: str
    seconds: float
    peak_memory_bytes: int | None = None
    depth: int = 0


def _cuda_peak() -> int | None:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    return None


def _reset_cuda_peak() -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


@dataclass
class Tracer:
    """Collects a TraceRecord for every block a composite runs (nested paths are dotted)."""

    records: list[TraceRecord] = field(default_factory=list)
    _stack: list[str] = field(default_factory=list)
    _peaks: list[int] = field(default_factory=list)  # running peak of each open block

    def __enter__(self) -> Tracer:
        self._token = _TRACER.set(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _TRACER.reset(self._token)

    def run(self, name: str, block: Any, components: Any, state: Any):
        self._stack.append(name)
        record = TraceRecord(".".join(self._stack), type(block).__name__, 0.0, depth=len(self._stack) - 1)
        self.records.append(record)
        # The device keeps one peak counter: fold what accrued so far into the parent, then restart it.
        so_far = _cuda_peak()
        if so_far is not None and self._peaks:
            self._peaks[-1] = max(self._peaks[-1], so_far)
        _reset_cuda_peak()
        self._peaks.append(0)
        start = time.perf_counter()
        try:
            return block(components, state)
        finally:
            record.seconds = time.perf_counter() - start
            current = _cuda_peak()
            peak = self._peaks.pop()
            if current is not None:
                peak = max(peak, current)
                record.peak_memory_bytes = peak
                if self._peaks:
                    self._peaks[-1] = max(self._peaks[-1], peak)
                _reset_cuda_peak()
            self._stack.pop()

    def format(self) -> str:
        if not self.records:
            return "(no blocks ran)"
        width = max(len("  " * r.depth + r.path.rsplit(".", 1)[-1]) for r in self.records)
        lines = [f"{'block':<{width}}  {'class':<36} {'time':>10}  peak memory"]
        for r in self.records:
            label = "  " * r.depth + r.path.rsplit(".", 1)[-1]
            memory = f"{r.peak_memory_bytes / 2**20:.1f} MiB" if r.peak_memory_bytes is not None else "n/a (CPU)"
            lines.append(f"{label:<{width}}  {r.block:<36} {r.seconds * 1000:>8.2f}ms  {memory}")
        return "\n".join(lines)
