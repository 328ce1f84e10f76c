"""Pipeline-level IP-Adapter API on ModularPipeline (also `pipe.loader.<name>`, the documented spelling).

The adapter lives on the UNet (see `diffblocks.components.adapters.ip_adapter`); an IP-Adapter step in the
blocks (`StableDiffusionXLAutoIPAdapterStep`, `StableDiffusionAutoIPAdapterStep`) turns `ip_adapter_image` into
the image embeddings the UNet reads.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from ..components.adapters import ip_adapter as _ip
from ..components.adapters.files import load_adapter_file

logger = logging.getLogger(__name__)

__all__ = ["IPAdapterMixin"]


class IPAdapterMixin:
    """`load_ip_adapter`, `set_ip_adapter_scale`, `unload_ip_adapter` (see docs/adapters.md)."""

    components: dict[str, Any]

    def _ip_unet(self, what: str) -> Any:
        unet = self.components.get("unet")
        if not isinstance(unet, torch.nn.Module):
            raise ValueError(f"{type(self).__name__}.{what}: needs a loaded 'unet' component (IP-Adapter is for "
                             f"SD 1.x / SDXL UNets); load the components first (pipe.load_components()).")
        return unet

    def load_ip_adapter(self, pretrained_model_name_or_path_or_dict: str | os.PathLike | dict | list,
                        subfolder: str | list[str | None] | None = None,
                        weight_name: str | list[str | None] | None = None, revision: str | None = None,
                        **kwargs: Any) -> None:
        """Load one IP-Adapter (or several: lists of sources / subfolders / weight names, as in the reference) into
        the UNet, replacing any loaded before. Files use the reference's layout (`image_proj` + `ip_adapter`);
        the scale starts at 1.0. The image encoder is a separate component (`image_encoder`)."""
        if kwargs:
            raise TypeError(f"{type(self).__name__}.load_ip_adapter: unexpected arguments {sorted(kwargs)}.")
        unet = self._ip_unet("load_ip_adapter")
        names = list(weight_name) if isinstance(weight_name, (list, tuple)) else [weight_name]
        sources = pretrained_model_name_or_path_or_dict
        sources = list(sources) if isinstance(sources, (list, tuple)) else [sources]
        folders = list(subfolder) if isinstance(subfolder, (list, tuple)) else [subfolder]
        count = max(len(names), len(sources), len(folders))
        if len(sources) == 1:
            sources = sources * count
        if len(folders) == 1:
            folders = folders * count
        if len(names) == 1:
            names = names * count
        if not len(names) == len(sources) == len(folders):
            raise ValueError(f"load_ip_adapter: {len(sources)} sources, {len(folders)} subfolders and {len(names)} "
                             f"weight names; give one of each per adapter (or one to share).")
        state_dicts, described = [], []
        for source, folder, name in zip(sources, folders, names):
            state, _, where = load_adapter_file(source, name, folder, revision=revision)
            state_dicts.append(_ip.split_ip_adapter_state_dict(state, where))
            described.append(where)
        _ip.load_ip_adapter_into_unet(unet, state_dicts, described)
        if self.components.get("image_encoder") is None:
            logger.warning("%s: IP-Adapter loaded, but the pipeline has no 'image_encoder' component yet; add an "
                           "IP-Adapter step and load a CLIPVisionModelWithProjection as 'image_encoder'.",
                           type(self).__name__)

    def set_ip_adapter_scale(self, scale: Any) -> None:
        """A float, a per-block dict (``{"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}}``;
        blocks left out get 0), or a list with one such config per loaded adapter."""
        _ip.set_ip_adapter_scale(self._ip_unet("set_ip_adapter_scale"), scale)

    def unload_ip_adapter(self) -> None:
        """Remove the IP-Adapter layers and projection from the UNet (the exact base model comes back). The
        `image_encoder` / `feature_extractor` components stay (other blocks or pipelines may share them)."""
        _ip.unload_ip_adapter_from_unet(self._ip_unet("unload_ip_adapter"))
