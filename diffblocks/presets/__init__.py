"""Presets: concrete step blocks and block dicts for real model families.

`STANDARD_PIPELINES` maps a standard diffusers-format repo's `model_index.json` `_class_name` to the
auto blocks of its family (module, class name). Families register here as they land.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["STANDARD_PIPELINES", "PRESET_MODULES", "blocks_for_standard_pipeline", "import_preset_modules"]

_SD = ("diffblocks.presets.sd", "StableDiffusionAutoBlocks")
_SDXL = ("diffblocks.presets.sdxl", "StableDiffusionXLAutoBlocks")
_FLUX = ("diffblocks.presets.flux", "FluxAutoBlocks")
STANDARD_PIPELINES: dict[str, tuple[str, str]] = {
    "StableDiffusionPipeline": _SD,
    "StableDiffusionImg2ImgPipeline": _SD,
    "StableDiffusionInpaintPipeline": _SD,
    "StableDiffusionControlNetPipeline": _SD,
    "StableDiffusionControlNetImg2ImgPipeline": _SD,
    "StableDiffusionControlNetInpaintPipeline": _SD,
    "StableDiffusionXLPipeline": _SDXL,
    "StableDiffusionXLImg2ImgPipeline": _SDXL,
    "StableDiffusionXLInpaintPipeline": _SDXL,
    "StableDiffusionXLControlNetPipeline": _SDXL,
    "StableDiffusionXLControlNetImg2ImgPipeline": _SDXL,
    "StableDiffusionXLControlNetInpaintPipeline": _SDXL,
    "FluxPipeline": _FLUX,
    "FluxImg2ImgPipeline": _FLUX,
    "FluxInpaintPipeline": _FLUX,
}


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


# every module that defines preset block classes (saved pipelines name them by class)
PRESET_MODULES: tuple[str, ...] = ("diffblocks.presets.toy", *dict.fromkeys(m for m, _ in STANDARD_PIPELINES.values()))


def import_preset_modules() -> None:
    for module_name in PRESET_MODULES:
        importlib.import_module(module_name)
