"""LoRA adapters for training, through peft, and the diffusers/peft LoRA file layout.

The file (`pytorch_lora_weights.safetensors`) holds peft keys prefixed by component (`unet.` /
`text_encoder.`), e.g. `unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight`, and
each adapter's LoRA config as JSON under the `lora_adapter_metadata` header key, which is what
`load_lora_weights` of diffusers-format tools reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["LORA_WEIGHT_NAME", "UNET_LORA_TARGETS", "TEXT_ENCODER_LORA_TARGETS", "add_lora", "lora_state_dict",
           "save_lora_weights"]

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"
UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def add_lora(model: torch.nn.Module, target_modules: list[str], rank: int, lora_alpha: float | None = None,
             adapter_name: str = "default") -> None:
    """Inject trainable LoRA layers (gaussian-initialised A, zero B) into `model`; freeze nothing else here."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=lora_alpha if lora_alpha is not None else rank,
                        init_lora_weights="gaussian", target_modules=list(target_modules))
    inject_adapter_in_model(config, model, adapter_name=adapter_name)
    model._diffblocks_lora_config = config  # type: ignore[attr-defined]


def lora_state_dict(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=adapter_name)


def save_lora_weights(directory: str | Path, models: dict[str, torch.nn.Module],
                      weight_name: str = LORA_WEIGHT_NAME) -> Path:
    """Write the LoRA layers of each `{prefix: model}` in the diffusers/peft layout (+ adapter metadata)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, object] = {}
    for prefix, model in models.items():
        # recent transformers flatten CLIPTextModel; files keep the classic `text_model.` path every loader reads
        inner = "text_model." if type(model).__name__.startswith("CLIPTextModel") and \
            not hasattr(model, "text_model") else ""
        for key, value in lora_state_dict(model).items():
            tensors[f"{prefix}.{inner}{key}"] = value.detach().cpu().contiguous()
        config = getattr(model, "_diffblocks_lora_config", None)
        if config is not None:
            for key, value in config.to_dict().items():
                metadata[f"{prefix}.{key}"] = sorted(value) if isinstance(value, set) else value
    if not tensors:
        raise ValueError("save_lora_weights: the models hold no LoRA layers; call add_lora first.")
    path = Path(directory) / weight_name
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": "pt"}
    if metadata:
        header[LORA_ADAPTER_METADATA_KEY] = json.dumps(metadata, indent=2, sort_keys=True, default=str)
    save_file(tensors, str(path), metadata=header)
    return path
