"""LoRA files for the adapter tests, written by the reference library (diffusers) from peft-made adapters."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def allow_reference_text_encoder_lora() -> None:
    """transformers 5.25 gates its adapter code on peft >= 0.22, which the registry does not have yet; that code
    runs with the installed 0.21 peft, so the reference's text-encoder LoRA loading is let through the gate."""
    import transformers.integrations.peft as tp

    tp.MIN_PEFT_VERSION = "0.21.0"


def random_lora(model: torch.nn.Module, targets: list[str], seed: int, rank: int = 4, alpha: float = 8.0,
                std: float = 0.1):
    """(peft state dict, LoraConfig) of a random LoRA on a copy of `model` (the model itself is untouched)."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    model = copy.deepcopy(model)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights="gaussian")
    inject_adapter_in_model(config, model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return get_peft_model_state_dict(model), config


def write_reference_lora(ref_pipe, directory: Path, seed: int, rank: int = 4, alpha: float = 8.0,
                         metadata: bool = True, text_encoders: bool = True) -> Path:
    """A LoRA on the UNet (and text encoders) written by the reference pipeline class's `save_lora_weights`."""
    kwargs = {}
    unet_sd, unet_cfg = random_lora(ref_pipe.unet, UNET_TARGETS, seed, rank, alpha)
    kwargs["unet_lora_layers"] = unet_sd
    if metadata:
        kwargs["unet_lora_adapter_metadata"] = unet_cfg.to_dict()
    names = ["text_encoder", "text_encoder_2"] if text_encoders else []
    for i, name in enumerate(names):
        encoder = getattr(ref_pipe, name, None)
        if encoder is None:
            continue
        sd, cfg = random_lora(encoder, TE_TARGETS, seed + 100 + i, rank, alpha)
        kwargs[f"{name}_lora_layers"] = sd
        if metadata:
            kwargs[f"{name}_lora_adapter_metadata"] = cfg.to_dict()
    type(ref_pipe).save_lora_weights(str(directory), **kwargs)
    return directory / "pytorch_lora_weights.safetensors"
