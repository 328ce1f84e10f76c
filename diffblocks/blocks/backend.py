"""The seam through which blocks reach the runtime without importing it.

ARCHITECTURE.md: `runtime -> blocks`, never the reverse. `ModularPipelineBlocks.init_pipeline`,
`from_pretrained` and `save_pretrained` need the runtime (ModularPipeline, the Hub format), so the runtime
registers those implementations here when it is imported (`diffblocks.runtime/__init__.py`). A block used
before anything imported the runtime asks for it by module name on first use, as a plugin lookup: no module
in `blocks/` imports `runtime/`, and importing `diffblocks.blocks` never loads it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["RUNTIME_MODULE", "backend", "register_backend"]

RUNTIME_MODULE = "diffblocks.runtime"
OPERATIONS = ("init_pipeline", "load_blocks", "save_blocks", "run_block")

_registry: dict[str, Callable[..., Any]] = {}


def register_backend(**implementations: Callable[..., Any]) -> None:
    """Register the callables behind the blocks' runtime methods (names: `OPERATIONS`)."""
    unknown = sorted(set(implementations) - set(OPERATIONS))
    if unknown:
        raise ValueError(f"register_backend: unknown operation(s) {unknown}; known: {list(OPERATIONS)}.")
    _registry.update(implementations)


def backend(operation: str) -> Callable[..., Any]:
    """The registered implementation of `operation`, importing the runtime when none is registered yet."""
    if operation not in _registry:
        try:
            importlib.import_module(RUNTIME_MODULE)
        except ImportError as exc:
            raise RuntimeError(
                f"ModularPipelineBlocks.{operation.replace('_blocks', '_pretrained')} needs the runtime "
                f"({RUNTIME_MODULE}), which could not be imported: {exc}") from exc
    try:
        return _registry[operation]
    except KeyError:
        raise RuntimeError(f"{RUNTIME_MODULE} was imported but registered no {operation!r} implementation "
                           f"(registered: {sorted(_registry)}).") from None
