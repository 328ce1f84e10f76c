"""Layers of the Flux transformer: 3-axis RoPE, timestep/guidance/text conditioning, adaptive norms, joint attention.

Submodule and parameter names follow the standard Flux checkpoint layout (`attn.to_q`, `norm1.linear`,
`time_text_embed.timestep_embedder.linear_1`, ...), so real checkpoints load unchanged.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "AdaLayerNormContinuous",
    "AdaLayerNormZero",
    "AdaLayerNormZeroSingle",
    "CombinedTimestepGuidanceTextProjEmbeddings",
    "CombinedTimestepTextProjEmbeddings",
    "FeedForward",
    "FluxAttention",
    "FluxPosEmbed",
    "apply_rotary_emb",
    "rope_frequencies",
]


# -- rotary position embedding ----------------------------------------------------------------------
def rope_frequencies(ids: torch.Tensor, axes_dim: tuple[int, ...] | list[int], theta: float = 10000.0) -> torch.Tensor:
    """Rotation angles of every position id, as ``(S, 1, head_dim // 2, 2)`` float32 ``(cos, sin)`` pairs.

    Each of the ``len(axes_dim)`` id columns rotates its own slice of the head dimension (``axes_dim[i] // 2``
    frequency pairs). Angles are computed in float64 (as the original implementation) where the device has it, so
    large positions keep their precision. The trailing ``2`` lets `apply_rotary_emb` view the pairs as complex
    numbers without a copy. Computed once per forward and shared by every block.
    """
    if ids.ndim != 2 or ids.shape[-1] != len(axes_dim):
        raise ValueError(f"position ids must have shape (sequence, {len(axes_dim)}), got {tuple(ids.shape)}.")
    dtype = torch.float32 if ids.device.type == "mps" else torch.float64
    pos = ids.to(torch.float32).to(dtype)
    angles = []
    for i, dim in enumerate(axes_dim):
        inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=dtype, device=ids.device) / dim))
        angles.append(torch.outer(pos[:, i], inv))
    angle = torch.cat(angles, dim=-1)
    return torch.stack((angle.cos(), angle.sin()), dim=-1).float().unsqueeze(1)


def apply_rotary_emb(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of ``x`` (``(B, S, H, D)``) by the angles in ``freqs`` (`rope_frequencies`).

    The rotation runs in float32 and is cast back to ``x``'s dtype. Eagerly it is one complex multiply (three
    kernels); under ``torch.compile`` the real formulation, which inductor fuses into one kernel.
    """
    if torch.compiler.is_compiling():
        pairs = x.float().unflatten(-1, (-1, 2))
        real, imag = pairs[..., 0], pairs[..., 1]
        cos, sin = freqs[..., 0], freqs[..., 1]
        out = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
        return out.flatten(-2).to(x.dtype)
    rotated = torch.view_as_complex(x.float().unflatten(-1, (-1, 2))) * torch.view_as_complex(freqs)
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)


class FluxPosEmbed(nn.Module):
    """RoPE over the (text, image) position ids; holds no weights (module kept for the `pos_embed` path)."""

    def __init__(self, theta: float, axes_dim: tuple[int, ...] | list[int]):
        super().__init__()
        self.theta = theta
        self.axes_dim = tuple(int(d) for d in axes_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return rope_frequencies(ids, self.axes_dim, self.theta)


# -- conditioning embeddings ------------------------------------------------------------------------
def _timestep_sinusoid(timesteps: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """``[cos, sin]`` sinusoidal embedding of (fractional) timesteps, float32 ``(N, dim)``."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) * -math.log(max_period)
    args = timesteps[:, None].float() * torch.exp(exponent / half)[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Timesteps(nn.Module):
    """Parameter-free sinusoidal projection (kept as a module for the `time_proj` path)."""

    def __init__(self, num_channels: int = 256):
        super().__init__()
        self.num_channels = num_channels

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return _timestep_sinusoid(timesteps, self.num_channels)


class MLPEmbedding(nn.Module):
    """``linear_2(silu(linear_1(x)))``: the timestep / guidance embedder and the pooled-text projection."""

    def __init__(self, in_features: int, hidden_size: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden_size)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class CombinedTimestepTextProjEmbeddings(nn.Module):
    """Conditioning vector of FLUX.1-schnell: timestep embedding + projected pooled text embedding."""

    def __init__(self, embedding_dim: int, pooled_projection_dim: int):
        super().__init__()
        self.time_proj = Timesteps(256)
        self.timestep_embedder = MLPEmbedding(256, embedding_dim)
        self.text_embedder = MLPEmbedding(pooled_projection_dim, embedding_dim)

    def forward(self, timestep: torch.Tensor, pooled_projection: torch.Tensor) -> torch.Tensor:
        t_emb = self.timestep_embedder(self.time_proj(timestep).to(pooled_projection.dtype))
        return t_emb + self.text_embedder(pooled_projection)


class CombinedTimestepGuidanceTextProjEmbeddings(nn.Module):
    """Conditioning vector of guidance-distilled models (FLUX.1-dev): timestep + guidance scale + pooled text."""

    def __init__(self, embedding_dim: int, pooled_projection_dim: int):
        super().__init__()
        self.time_proj = Timesteps(256)
        self.timestep_embedder = MLPEmbedding(256, embedding_dim)
        self.guidance_embedder = MLPEmbedding(256, embedding_dim)
        self.text_embedder = MLPEmbedding(pooled_projection_dim, embedding_dim)

    def forward(self, timestep: torch.Tensor, guidance: torch.Tensor, pooled_projection: torch.Tensor) -> torch.Tensor:
        dtype = pooled_projection.dtype
        t_emb = self.timestep_embedder(self.time_proj(timestep).to(dtype))
        g_emb = self.guidance_embedder(self.time_proj(guidance).to(dtype))
        return (t_emb + g_emb) + self.text_embedder(pooled_projection)


# -- adaptive norms ---------------------------------------------------------------------------------
def _modulate(normed: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``normed * (1 + scale) + shift`` with per-sample ``(B, D)`` shift/scale, in one fused kernel."""
    return torch.addcmul(shift.unsqueeze(1), normed, (1 + scale).unsqueeze(1))


class AdaLayerNormZero(nn.Module):
    """adaLN-Zero of a double-stream block: modulated input plus the gates/shift/scale for the MLP."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, 6 * embedding_dim)
        self.norm = nn.LayerNorm(embedding_dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.linear(self.silu(emb)).chunk(6, dim=1)
        return _modulate(self.norm(x), shift_msa, scale_msa), gate_msa, shift_mlp, scale_mlp, gate_mlp


class AdaLayerNormZeroSingle(nn.Module):
    """adaLN-Zero of a single-stream block: modulated input and the output gate."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, 3 * embedding_dim)
        self.norm = nn.LayerNorm(embedding_dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale, gate = self.linear(self.silu(emb)).chunk(3, dim=1)
        return _modulate(self.norm(x), shift, scale), gate


class AdaLayerNormContinuous(nn.Module):
    """The output norm: layer norm modulated by the conditioning vector (note: scale comes before shift)."""

    def __init__(self, embedding_dim: int, conditioning_embedding_dim: int, eps: float = 1e-6):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(conditioning_embedding_dim, 2 * embedding_dim)
        self.norm = nn.LayerNorm(embedding_dim, elementwise_affine=False, eps=eps)

    def forward(self, x: torch.Tensor, conditioning_embedding: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(self.silu(conditioning_embedding).to(x.dtype)).chunk(2, dim=1)
        return _modulate(self.norm(x), shift, scale)


# -- feed-forward -----------------------------------------------------------------------------------
class GELUProjection(nn.Module):
    """Linear followed by tanh-approximate GELU (the `net.0` of the feed-forward, `net.0.proj` weights)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(hidden_states), approximate="tanh")


class FeedForward(nn.Module):
    """``net.2(gelu_tanh(net.0.proj(x)))`` with a 4x hidden width (``net.1`` is a no-op dropout kept for the layout)."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4):
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.ModuleList([GELUProjection(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim_out or dim)])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](hidden_states))


# -- attention --------------------------------------------------------------------------------------
class FluxAttention(nn.Module):
    """Multi-head self-attention with RMS-normalised queries/keys, RoPE and scaled_dot_product_attention.

    With ``added_kv_proj_dim`` (double-stream blocks) the text tokens get their own projections and the two
    streams attend jointly (text first); the call then returns ``(image_out, text_out)``. ``pre_only``
    (single-stream blocks) leaves out the output projection: the block's `proj_out` does it.
    Guiders find this module by its ``to_q``/``to_k``/``to_v`` and treat it as self-attention.
    """

    is_cross_attention = False

    def __init__(self, query_dim: int, heads: int, dim_head: int, added_kv_proj_dim: int | None = None,
                 pre_only: bool = False, eps: float = 1e-6):
        super().__init__()
        self.heads = heads
        self.head_dim = dim_head
        self.inner_dim = heads * dim_head
        self.added_kv_proj_dim = added_kv_proj_dim
        self.pre_only = pre_only
        self.norm_q = nn.RMSNorm(dim_head, eps=eps)
        self.norm_k = nn.RMSNorm(dim_head, eps=eps)
        self.to_q = nn.Linear(query_dim, self.inner_dim)
        self.to_k = nn.Linear(query_dim, self.inner_dim)
        self.to_v = nn.Linear(query_dim, self.inner_dim)
        if not pre_only:
            self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, query_dim), nn.Dropout(0.0)])
        if added_kv_proj_dim is not None:
            self.norm_added_q = nn.RMSNorm(dim_head, eps=eps)
            self.norm_added_k = nn.RMSNorm(dim_head, eps=eps)
            self.add_q_proj = nn.Linear(added_kv_proj_dim, self.inner_dim)
            self.add_k_proj = nn.Linear(added_kv_proj_dim, self.inner_dim)
            self.add_v_proj = nn.Linear(added_kv_proj_dim, self.inner_dim)
            self.to_add_out = nn.Linear(self.inner_dim, query_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (-1, self.head_dim))  # (B, S, H, D)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if kwargs:
            _warn_unused(kwargs)
        query = self.norm_q(self._heads(self.to_q(hidden_states)))
        key = self.norm_k(self._heads(self.to_k(hidden_states)))
        value = self._heads(self.to_v(hidden_states))
        joint = encoder_hidden_states is not None and self.added_kv_proj_dim is not None
        if joint:
            query = torch.cat([self.norm_added_q(self._heads(self.add_q_proj(encoder_hidden_states))), query], dim=1)
            key = torch.cat([self.norm_added_k(self._heads(self.add_k_proj(encoder_hidden_states))), key], dim=1)
            value = torch.cat([self._heads(self.add_v_proj(encoder_hidden_states)), value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb)
            key = apply_rotary_emb(key, image_rotary_emb)
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                             attn_mask=attention_mask)
        out = out.transpose(1, 2).flatten(2).to(query.dtype)
        if not joint:
            return out if self.pre_only else self.to_out[0](out)
        text_len = encoder_hidden_states.shape[1]
        context, out = out[:, :text_len], out[:, text_len:]
        return self.to_out[0](out), self.to_add_out(context)


_warned: set[str] = set()


def _warn_unused(kwargs: dict[str, Any]) -> None:
    names = sorted(set(kwargs) - _warned)
    if names:
        _warned.update(names)
        logger.warning("joint_attention_kwargs %s are not used by FluxAttention and are ignored "
                       "(supported: attention_mask, scale).", names)
