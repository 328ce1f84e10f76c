"""Presets: concrete step blocks and block dicts for real model families.

`STANDARD_PIPELINES` maps a standard diffusers-format repo's `model_index.json` `_class_name` to the
auto blocks of its family (module, class name). Families register here as they land.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["STANDARD_PIPELINES", "blocks_for_standard_pipeline"]

STANDARD_PIPELINES: dict[str, tuple[str, str]] = {}


def blocks_for_standard_pipeline(class_name: str | None, model_index: dict[str, Any]):
    """The auto blocks for a standard repo whose model_index.json names `class_name`."""
    if class_name not in STANDARD_PIPELINES:
        supported = sorted(STANDARD_PIPELINES) or ["(none yet)"]
        raise ValueError(
            f"No diffblocks preset for standard pipeline {class_name!r}. Supported: {supported}. "
            f"Build the blocks yourself and call blocks.init_pipeline(repo) instead."
        )
    module_name, blocks_name = STANDARD_PIPELINES[class_name]
    return getattr(importlib.import_module(module_name), blocks_name)()
