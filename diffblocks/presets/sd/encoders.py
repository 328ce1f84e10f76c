"""Stable Diffusion 1.x/2.x encoder steps inserted on demand: the IP-Adapter step.

``blocks.sub_blocks.insert("ip_adapter", StableDiffusionAutoIPAdapterStep(), 0)``, then
``pipe.load_ip_adapter(...)`` and call with ``ip_adapter_image=...``.
"""

from __future__ import annotations

from ..common.ip_adapter import AutoIPAdapterStep, IPAdapterStep

__all__ = ["StableDiffusionAutoIPAdapterStep", "StableDiffusionIPAdapterStep"]


class StableDiffusionIPAdapterStep(IPAdapterStep):
    model_name = "stable-diffusion"


class StableDiffusionAutoIPAdapterStep(AutoIPAdapterStep):
    block_classes = [StableDiffusionIPAdapterStep, StableDiffusionIPAdapterStep]
