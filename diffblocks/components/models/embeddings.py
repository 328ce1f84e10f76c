"""Timestep embeddings shared by the UNet, ControlNet and (later) the Flux transformer."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["TimestepEmbedding", "Timesteps", "get_activation", "timestep_embedding"]


def get_activation(name: str) -> nn.Module:
    """The activation module a config names (`act_fn`)."""
    activations = {"silu": nn.SiLU, "swish": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU, "relu": nn.ReLU}
    try:
        return activations[name.lower()]()
    except KeyError:
        raise ValueError(f"Unknown activation {name!r}; expected one of {sorted(activations)}.") from None


def timestep_embedding(
    timesteps: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1.0,
    scale: float = 1.0,
    max_period: int = 10000,
) -> torch.Tensor:
    """Sinusoidal embedding of a 1-d batch of (possibly fractional) timesteps, shape (N, dim), float32."""
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be a 1-d tensor, got shape {tuple(timesteps.shape)}")
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) * (-math.log(max_period))
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    args = timesteps[:, None].float() * freqs[None, :] * scale
    if flip_sin_to_cos:
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    else:
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class Timesteps(nn.Module):
    """Parameter-free sinusoidal projection (module kept so paths like `time_proj` match the layout)."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float, scale: float = 1.0):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.scale = scale

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(timesteps, self.num_channels, self.flip_sin_to_cos, self.downscale_freq_shift,
                                  self.scale)


class TimestepEmbedding(nn.Module):
    """MLP from the sinusoidal embedding to the block's embedding size (also used for SDXL's added cond)."""

    def __init__(self, in_channels: int, time_embed_dim: int, act_fn: str = "silu", out_dim: int | None = None,
                 post_act_fn: str | None = None, cond_proj_dim: int | None = None, sample_proj_bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim, bias=sample_proj_bias)
        self.cond_proj = nn.Linear(cond_proj_dim, in_channels, bias=False) if cond_proj_dim is not None else None
        self.act = get_activation(act_fn)
        self.linear_2 = nn.Linear(time_embed_dim, out_dim or time_embed_dim, bias=sample_proj_bias)
        self.post_act = get_activation(post_act_fn) if post_act_fn is not None else None

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            if self.cond_proj is None:
                raise ValueError("timestep_cond was given but the model has no time_cond_proj_dim in its config.")
            sample = sample + self.cond_proj(condition)
        sample = self.linear_2(self.act(self.linear_1(sample)))
        if self.post_act is not None:
            sample = self.post_act(sample)
        return sample
