"""SDXL encoder steps that are inserted into a pipeline on demand: the IP-Adapter step.

``from diffblocks.presets.sdxl.encoders import StableDiffusionXLAutoIPAdapterStep`` (the documented spelling),
then ``blocks.sub_blocks.insert("ip_adapter", StableDiffusionXLAutoIPAdapterStep(), 0)``.
"""

from __future__ import annotations

from ..common.ip_adapter import AutoIPAdapterStep, IPAdapterStep

__all__ = ["StableDiffusionXLAutoIPAdapterStep", "StableDiffusionXLIPAdapterStep"]


class StableDiffusionXLIPAdapterStep(IPAdapterStep):
    model_name = "stable-diffusion-xl"
    default_guidance_scale = 5.0  # the SDXL pipelines' default, as XL_GUIDANCE in presets.sdxl


class StableDiffusionXLAutoIPAdapterStep(AutoIPAdapterStep):
    block_classes = [StableDiffusionXLIPAdapterStep, StableDiffusionXLIPAdapterStep]
