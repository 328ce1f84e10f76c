"""The node engine behind `diffblocks serve` and `diffblocks run`: ComfyUI-format workflows run on our blocks.

- `nodes/`: the node catalogue (ComfyUI core nodes implemented on the presets' blocks, and every preset block as a
  `diffblocks/<family>/<Block>` node) and `NodeRegistry`, which describes them in ComfyUI's `/object_info` format;
- `engine.py`: `PromptEngine` validates an API-format prompt and executes it in dependency order, caching node
  outputs between prompts by input signature, with progress, previews and interrupt through the runtime;
- the HTTP side (aiohttp, the `server` extra): `app.py` (`create_app`), `api.py` (routes), `queue.py` and
  `worker.py` (one queue, one worker thread, the history), `reporting.py` and `ws.py` (socket events),
  `files.py`, `userdata.py`, `logs.py`, `frontend.py`; imported only when used (`diffblocks run` needs no aiohttp).

Nothing outside `server/` and `cli/` imports this package (see ARCHITECTURE.md).
"""

from __future__ import annotations

from .engine import ExecutionHooks, NodeExecutionError, PromptEngine, ValidationResult
from .nodes.registry import NodeRegistry

__all__ = ["ExecutionHooks", "NodeExecutionError", "NodeRegistry", "PromptEngine", "ValidationResult", "create_app"]


def __getattr__(name: str):
    if name == "create_app":  # the HTTP server needs aiohttp (the `server` extra): loaded on first use
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
