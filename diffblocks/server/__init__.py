"""The node engine behind `diffblocks serve` and `diffblocks run`: ComfyUI-format workflows run on our blocks.

- `nodes/`: the node catalogue (ComfyUI core nodes implemented on the presets' blocks, and every preset block as a
  `diffblocks/<family>/<Block>` node) and `NodeRegistry`, which describes them in ComfyUI's `/object_info` format;
- `engine.py`: `PromptEngine` validates an API-format prompt and executes it in dependency order, caching node
  outputs between prompts by input signature, with progress, previews and interrupt through the runtime.

Nothing outside `server/` and `cli/` imports this package (see ARCHITECTURE.md).
"""

from __future__ import annotations

from .engine import ExecutionHooks, NodeExecutionError, PromptEngine, ValidationResult
from .nodes.registry import NodeRegistry

__all__ = ["ExecutionHooks", "NodeExecutionError", "NodeRegistry", "PromptEngine", "ValidationResult"]
