"""Resolving the blocks a command works on: a preset short name, `module:Class`, or a repo folder / id."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["NAMED_BLOCKS", "resolve_blocks"]

# short names `diffblocks inspect NAME` understands: name -> (module, blocks class)
NAMED_BLOCKS: dict[str, tuple[str, str]] = {
    "toy": ("diffblocks.presets.toy", "ToyDiffusionBlocks"),
    "sd": ("diffblocks.presets.sd", "StableDiffusionAutoBlocks"),
    "sdxl": ("diffblocks.presets.sdxl", "StableDiffusionXLAutoBlocks"),
    "flux": ("diffblocks.presets.flux", "FluxAutoBlocks"),
}


def resolve_blocks(target: str) -> Any:
    """A blocks instance from a short name, `module:Class` / `module.Class`, or a repo folder / id."""
    from ..blocks.base import ModularPipelineBlocks

    if target in NAMED_BLOCKS:
        module, name = NAMED_BLOCKS[target]
        return getattr(importlib.import_module(module), name)()
    if ":" in target or (target.count(".") >= 1 and not target.startswith((".", "/")) and "/" not in target):
        module_name, _, class_name = target.replace(":", ".").rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise SystemExit(f"diffblocks: cannot import blocks {target!r}: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, ModularPipelineBlocks)):
            raise SystemExit(f"diffblocks: {target!r} is not a ModularPipelineBlocks class")
        return cls()
    from ..runtime.pipeline import ModularPipeline

    return ModularPipeline.from_pretrained(target)._blocks
