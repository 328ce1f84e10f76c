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


# -- IP-Adapter --------------------------------------------------------------------------------------------------------
IMAGE_EMBED_DIM = 24  # the tiny CLIP vision encoder's projection_dim (the adapter's image_embed_dim)


def tiny_image_encoder(seed: int = 0):
    """(CLIPVisionModelWithProjection, CLIPImageProcessor): a seeded 32x32 CLIP vision tower and its processor."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, projection_dim=IMAGE_EMBED_DIM,
                              num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
                              num_channels=3)
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return encoder, processor


def add_image_encoder(folder: Path, seed: int = 0) -> Path:
    """Save the tiny image encoder and feature extractor into a pipeline folder (model_index entries too)."""
    import json

    encoder, processor = tiny_image_encoder(seed)
    encoder.save_pretrained(str(folder / "image_encoder"))
    processor.save_pretrained(str(folder / "feature_extractor"))
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["image_encoder"] = ["transformers", "CLIPVisionModelWithProjection"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    index_path.write_text(json.dumps(index, indent=2))
    return folder


def random_ip_adapter(reference_unet, seed: int, std: float = 0.2) -> dict[str, dict[str, torch.Tensor]]:
    """A basic IP-Adapter in the reference's layout ({"image_proj": ..., "ip_adapter": ...}) for a reference
    UNet: keys 1, 3, 5, ... follow the reference's attention-processor order, shapes its cross-attention layers."""
    gen = torch.Generator().manual_seed(seed)
    cross = reference_unet.config.cross_attention_dim

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * std

    image_proj = {"proj.weight": rand(4 * cross, IMAGE_EMBED_DIM), "proj.bias": rand(4 * cross),
                  "norm.weight": 1 + rand(cross), "norm.bias": rand(cross)}
    ip_adapter = {}
    modules = dict(reference_unet.named_modules())
    key_id = 1
    for name in reference_unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        attn = modules[name[: -len(".processor")]]
        ip_adapter[f"{key_id}.to_k_ip.weight"] = rand(attn.to_k.out_features, cross)
        ip_adapter[f"{key_id}.to_v_ip.weight"] = rand(attn.to_v.out_features, cross)
        key_id += 2
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def save_ip_adapter(state: dict[str, dict[str, torch.Tensor]], path: Path) -> Path:
    """`.safetensors`: flat ``image_proj.*`` / ``ip_adapter.*`` keys; `.bin`: the nested dict (torch.save)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({f"{part}.{k}": v.contiguous() for part, sd in state.items() for k, v in sd.items()}, str(path))
    else:
        torch.save(state, str(path))
    return path


def seeded_images(pipe, ours: bool, **kwargs):
    """One seeded call of a reference pipeline or of ours (numpy images), with the same arguments."""
    extra = {"output": "images"} if ours else {}
    out = pipe(**kwargs, generator=torch.Generator().manual_seed(0), output_type="np", **extra)
    return out if ours else out.images


def assert_close(got, expected, tol: float = 1e-4) -> None:
    import numpy as np

    err = np.abs(got - expected).max()
    assert err <= tol, f"max abs difference {err:.2e} > {tol}"
