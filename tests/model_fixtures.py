"""Tiny model configs shaped like the real SD-family checkpoints, and helpers to build reference folders.

The reference implementation (diffusers) builds and saves the checkpoints; our models load the same folder.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

SD15_UNET: dict[str, Any] = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64], "layers_per_block": 2, "cross_attention_dim": 32,
    "attention_head_dim": 8, "norm_num_groups": 8,
}

# SD 2.x: per-block head counts, linear projections, upcast attention (v-prediction is the scheduler's business)
SD2_UNET: dict[str, Any] = {
    **SD15_UNET,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64, 64], "attention_head_dim": [2, 4, 4], "use_linear_projection": True,
    "upcast_attention": True, "cross_attention_dim": 24,
}

# SDXL: text_time added conditioning, transformer depth lists, no attention in the first block
SDXL_UNET: dict[str, Any] = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 64], "layers_per_block": 2, "cross_attention_dim": 48,
    "attention_head_dim": [2, 4, 8], "transformer_layers_per_block": [1, 1, 2], "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 32 + 6 * 8, "norm_num_groups": 8,
}
SDXL_TEXT_EMBED_DIM = 32

INPAINT_UNET: dict[str, Any] = {**SD15_UNET, "in_channels": 9}

CONTROLNET: dict[str, Any] = {
    "in_channels": 4, "down_block_types": SD15_UNET["down_block_types"],
    "block_out_channels": [32, 64], "layers_per_block": 2, "cross_attention_dim": 32, "attention_head_dim": 8,
    "norm_num_groups": 8, "conditioning_embedding_out_channels": [8, 16, 16, 32],
}

SD_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 32,
    "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 16,
}

FLUX_LIKE_VAE: dict[str, Any] = {
    **SD_VAE, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False,
    "scaling_factor": 0.3611, "shift_factor": 0.1159,
}

# full-size configs as published (random weights in tests)
SD15_UNET_FULL: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "cross_attention_dim": 768, "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "norm_num_groups": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SDXL_UNET_FULL: dict[str, Any] = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "cross_attention_dim": 2048,
    "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True, "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
}
SD_VAE_FULL: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 512, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "norm_num_groups": 32,
}


def perturb_(model: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Add seeded noise to every parameter so zero-initialised layers and norm affines matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return model


def reference_model(kind: str, config: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """A diffusers model (`kind` is its class name) with seeded, perturbed weights, in eval mode."""
    import diffusers

    torch.manual_seed(seed)
    model = getattr(diffusers, kind)(**copy.deepcopy(config))
    return perturb_(model, seed + 1).eval()


def save_reference(kind: str, config: dict[str, Any], directory: Path, seed: int = 0, **save_kwargs: Any):
    model = reference_model(kind, config, seed)
    model.save_pretrained(str(directory), **save_kwargs)
    return model


def assert_matches(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5, what: str = "output") -> None:
    """Equal within `rel` of the reference's scale (max |ref|)."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    scale = ref.abs().max().item()
    err = (ours.float() - ref.float()).abs().max().item()
    assert scale > 0, f"{what}: reference output is all zeros; the test would not detect anything"
    assert err <= rel * scale, f"{what}: max abs error {err:.3e} exceeds {rel:g} x output scale {scale:.3e}"


def unet_inputs(config: dict[str, Any], batch: int = 2, size: int = 16, seq: int = 7,
                seed: int = 123) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    cross = config["cross_attention_dim"]
    cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    kwargs: dict[str, Any] = {
        "sample": torch.randn(batch, config["in_channels"], size, size, generator=gen),
        "timestep": torch.tensor([10, 700][:batch] + [500] * max(0, batch - 2)),
        "encoder_hidden_states": torch.randn(batch, seq, cross, generator=gen),
    }
    if config.get("addition_embed_type") == "text_time":
        text_dim = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, text_dim, generator=gen),
            "time_ids": torch.tensor([[size * 8, size * 8, 0, 0, size * 8, size * 8]] * batch, dtype=torch.float32),
        }
    return kwargs
