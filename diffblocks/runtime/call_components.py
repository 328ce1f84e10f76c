"""The components one pipeline call runs on: the pipeline's own, with per-call copies of busy stateful ones.

Schedulers and guiders carry per-call state (timesteps, step index, multistep history, the guider's current
step). A component that defines `copy_for_call()` is claimed by the first call that reads it: that call uses
the shared object itself (so a lone call behaves exactly as before: `pipe.scheduler.timesteps` shows its
schedule, during and after the call). A call that finds it claimed by another running call gets its own copy
instead, so several threads can run one pipeline at once and each gets exactly the result of a sequential
call. Models, tokenizers, config values and methods are always the pipeline's own.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["CallComponents"]

_LOCK = threading.Lock()
_CLAIMED: set[int] = set()  # ids of stateful components a running call is using


class CallComponents:
    """Attribute access as on the pipeline (`components.unet`, `components.execution_device`, ...)."""

    __slots__ = ("_pipe", "_used", "_plain")

    def __init__(self, pipe: Any) -> None:
        object.__setattr__(self, "_pipe", pipe)
        object.__setattr__(self, "_used", {})
        object.__setattr__(self, "_plain", {})  # name -> the value last seen without copy_for_call

    def __getattr__(self, name: str) -> Any:
        found = self._used.get(name)
        if found is not None:
            return found[1]
        pipe = self._pipe
        value = getattr(pipe, name)  # read every time: a component swapped during the call is seen
        if value is None or self._plain.get(name) is value:
            return value  # known plain (a model): skips hasattr, which is slow on modules (their __getattr__)
        if name in pipe._components and hasattr(value, "copy_for_call"):
            with _LOCK:
                claimed = id(value) in _CLAIMED
                if not claimed:
                    _CLAIMED.add(id(value))
            own = value.copy_for_call() if claimed else value
            self._used[name] = (value, own)
            return own
        self._plain[name] = value
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._pipe, name, value)

    def __repr__(self) -> str:
        return f"CallComponents({self._pipe!r})"

    def finish_call(self) -> None:
        """Release the shared components this call claimed (always called, also when the call failed)."""
        with _LOCK:
            for shared, own in self._used.values():
                if own is shared:
                    _CLAIMED.discard(id(shared))
        self._used.clear()
        self._plain.clear()
