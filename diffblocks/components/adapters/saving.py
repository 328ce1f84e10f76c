"""Writing LoRA files in the diffusers/peft layout (what the reference's `save_lora_weights` writes and its
`load_lora_weights` reads): ``<component>.<module>.lora_A.weight`` keys, LoraConfig in the header metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import lora as _lora
from .model_mixin import LORA_WEIGHT_NAME

__all__ = ["lora_state_dict", "save_lora_weights"]


def lora_state_dict(components: dict[str, nn.Module], adapter_name: str | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, metadata) of one adapter over several components, keys prefixed by the component name.

    `components` maps the prefix to the model, e.g. ``{"unet": unet, "text_encoder": text_encoder}``;
    components without that adapter are skipped (a UNet-only LoRA is fine). The metadata is the
    per-component LoraConfig (``"unet.r"``, ``"unet.lora_alpha"``, ...), as the reference stores it.
    """
    state: dict[str, torch.Tensor] = {}
    metadata: dict[str, Any] = {}
    for prefix, model in components.items():
        names = _lora.list_adapters(model)
        if not names:
            continue
        name = adapter_name
        if name is None:
            active = _lora.active_adapters(model)
            name = active[0] if active else names[0]
        if name not in names:
            continue
        # transformers 5 flattened CLIPTextModel; files keep the classic `text_model.` path every loader reads
        inner = "text_model." if type(model).__name__.startswith("CLIPTextModel") and \
            not hasattr(model, "text_model") else ""
        for key, tensor in _lora.get_lora_state_dict(model, name).items():
            state[f"{prefix}.{inner}{key}"] = tensor.detach().to("cpu").contiguous()
        for key, value in _lora.lora_config_metadata(model, name).items():
            metadata[f"{prefix}.{key}"] = value
    if not state:
        raise ValueError(f"lora_state_dict: none of {sorted(components)} holds "
                         f"{'adapter ' + repr(adapter_name) if adapter_name else 'a LoRA adapter'}.")
    return state, metadata


def save_lora_weights(save_directory: str | os.PathLike, components: dict[str, nn.Module],
                      adapter_name: str | None = None, weight_name: str = LORA_WEIGHT_NAME) -> Path:
    """Write `pytorch_lora_weights.safetensors` (diffusers/peft layout) for `components`; returns the path."""
    from safetensors.torch import save_file

    state, metadata = lora_state_dict(components, adapter_name)
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / weight_name
    header = {"format": "pt", "lora_adapter_metadata": json.dumps(metadata, indent=2, sort_keys=True)}
    save_file(state, str(path), metadata=header)
    return path
