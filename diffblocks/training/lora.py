"""LoRA adapters for training, through peft; files are written by the adapters package's saver.

The file (`pytorch_lora_weights.safetensors`) holds peft keys prefixed by component (`unet.` /
`text_encoder.`) and each adapter's LoRA config under the `lora_adapter_metadata` header key: what
`load_lora_weights` of diffblocks and of diffusers-format tools reads.
"""

from __future__ import annotations

import torch

from ..components.adapters.model_mixin import LORA_WEIGHT_NAME
from ..components.adapters.saving import save_lora_weights

__all__ = ["LORA_WEIGHT_NAME", "TEXT_ENCODER_LORA_TARGETS", "UNET_LORA_TARGETS", "add_lora", "save_lora_weights"]

UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def add_lora(model: torch.nn.Module, target_modules: list[str], rank: int, lora_alpha: float | None = None,
             adapter_name: str = "default") -> None:
    """Inject trainable LoRA layers (gaussian-initialised A, zero B) into `model` (as the diffusers scripts do)."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=lora_alpha if lora_alpha is not None else rank,
                        init_lora_weights="gaussian", target_modules=list(target_modules))
    inject_adapter_in_model(config, model, adapter_name=adapter_name)
