"""Attention and the spatial transformer used inside the SD UNet (and the VAE mid block).

`Attention` keeps the reference layout (`to_q`, `to_k`, `to_v`, `to_out.0`) and computes attention in its own
forward with `scaled_dot_product_attention`, so hooks on `attn1` / `attn2` / `ff` / `transformer_blocks.N`
(guiders such as PAG or SLG) see exactly one call per attention layer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["Attention", "BasicTransformerBlock", "FeedForward", "GEGLU", "Transformer2DModel", "mask_to_bias"]


def mask_to_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A (batch, keys) keep-mask (1/True = keep) as an additive bias of shape (batch, 1, keys).

    Masks with 3 dims are taken to be biases already (the UNet converts once, blocks pass them on).
    """
    if mask is None or mask.ndim != 2:
        return mask
    return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)


class Attention(nn.Module):
    """Multi-head (self or cross) attention.

    With `norm_num_groups` and `residual_connection` it is the VAE's spatial self-attention on (B, C, H, W)
    inputs; otherwise it works on (B, N, C) tokens.
    """

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        bias: bool = False,
        out_bias: bool = True,
        upcast_attention: bool = False,
        norm_num_groups: int | None = None,
        eps: float = 1e-5,
        residual_connection: bool = False,
        rescale_output_factor: float = 1.0,
        from_deprecated_attn_block: bool = False,
    ):
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.is_cross_attention = cross_attention_dim is not None
        # SDPA accumulates in fp32 internally; the flag is kept for configs and for custom processors.
        self.upcast_attention = upcast_attention
        self.residual_connection = residual_connection
        self.rescale_output_factor = rescale_output_factor
        self._from_deprecated_attn_block = from_deprecated_attn_block
        self.group_norm = (
            nn.GroupNorm(norm_num_groups, query_dim, eps=eps, affine=True) if norm_num_groups is not None else None
        )
        kv_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(kv_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(kv_dim, inner_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim, bias=out_bias), nn.Dropout(dropout)])

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        spatial = hidden_states.ndim == 4
        if spatial:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch = hidden_states.shape[0]
        if self.group_norm is not None:
            hidden_states = self.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states

        q = self.to_q(hidden_states).view(batch, -1, self.heads, self.dim_head).transpose(1, 2)
        k = self.to_k(context).view(batch, -1, self.heads, self.dim_head).transpose(1, 2)
        v = self.to_v(context).view(batch, -1, self.heads, self.dim_head).transpose(1, 2)
        if attention_mask is not None:
            if attention_mask.shape[-1] != k.shape[2]:
                raise ValueError(f"attention mask covers {attention_mask.shape[-1]} keys but the attention has "
                                 f"{k.shape[2]} keys.")
            if attention_mask.ndim == 3:
                attention_mask = attention_mask.unsqueeze(1)  # broadcast over heads
            attention_mask = attention_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        out = out.transpose(1, 2).reshape(batch, -1, self.heads * self.dim_head)
        out = self.to_out[1](self.to_out[0](out))

        if spatial:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if self.residual_connection:
            out = out + residual
        if self.rescale_output_factor != 1.0:
            out = out / self.rescale_output_factor
        return out


class GEGLU(nn.Module):
    """Gated GELU: one projection to twice the width, half gates the other."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states, gate = self.proj(hidden_states).chunk(2, dim=-1)
        return hidden_states * F.gelu(gate)


class FeedForward(nn.Module):
    """`net.0` (GEGLU), `net.1` dropout, `net.2` output projection, as in the reference layout."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0,
                 activation_fn: str = "geglu", inner_dim: int | None = None, bias: bool = True):
        super().__init__()
        if activation_fn != "geglu":
            raise ValueError(f"FeedForward supports activation_fn='geglu' (SD/SDXL), got {activation_fn!r}.")
        inner_dim = inner_dim or dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner_dim, bias=bias), nn.Dropout(dropout),
                                  nn.Linear(inner_dim, dim_out or dim, bias=bias)])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for module in self.net:
            hidden_states = module(hidden_states)
        return hidden_states


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention (`attn1`), cross-attention (`attn2`) and GEGLU feed-forward (`ff`)."""

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        dropout: float = 0.0,
        cross_attention_dim: int | None = None,
        attention_bias: bool = False,
        only_cross_attention: bool = False,
        double_self_attention: bool = False,
        upcast_attention: bool = False,
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.only_cross_attention = only_cross_attention
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.attn1 = Attention(
            dim, cross_attention_dim=cross_attention_dim if only_cross_attention else None,
            heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout, bias=attention_bias,
            upcast_attention=upcast_attention,
        )
        if cross_attention_dim is not None or double_self_attention:
            self.norm2 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
            self.attn2 = Attention(
                dim, cross_attention_dim=None if double_self_attention else cross_attention_dim,
                heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout, bias=attention_bias,
                upcast_attention=upcast_attention,
            )
        else:
            self.norm2 = None
            self.attn2 = None
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn="geglu")

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        kwargs = cross_attention_kwargs or {}
        hidden_states = self.attn1(
            self.norm1(hidden_states),
            encoder_hidden_states=encoder_hidden_states if self.only_cross_attention else None,
            attention_mask=attention_mask, **kwargs,
        ) + hidden_states
        if self.attn2 is not None:
            hidden_states = self.attn2(
                self.norm2(hidden_states), encoder_hidden_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask, **kwargs,
            ) + hidden_states
        return self.ff(self.norm3(hidden_states)) + hidden_states


class Transformer2DModel(nn.Module):
    """GroupNorm -> proj_in (1x1 conv, or linear for SD2/SDXL) -> transformer blocks -> proj_out, residual."""

    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 88,
        in_channels: int | None = None,
        out_channels: int | None = None,
        num_layers: int = 1,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        cross_attention_dim: int | None = None,
        attention_bias: bool = False,
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        double_self_attention: bool = False,
        upcast_attention: bool = False,
    ):
        super().__init__()
        if in_channels is None:
            raise ValueError("Transformer2DModel needs in_channels (continuous inputs only).")
        inner_dim = num_attention_heads * attention_head_dim
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels, self.inner_dim = in_channels, out_channels, inner_dim
        self.use_linear_projection = use_linear_projection
        self.gradient_checkpointing = False
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6, affine=True)
        if use_linear_projection:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(
                inner_dim, num_attention_heads, attention_head_dim, dropout=dropout,
                cross_attention_dim=cross_attention_dim, attention_bias=attention_bias,
                only_cross_attention=only_cross_attention, double_self_attention=double_self_attention,
                upcast_attention=upcast_attention,
            )
            for _ in range(num_layers)
        ])
        if use_linear_projection:
            self.proj_out = nn.Linear(inner_dim, out_channels)
        else:
            self.proj_out = nn.Conv2d(inner_dim, out_channels, kernel_size=1)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        attention_mask = mask_to_bias(attention_mask, hidden_states.dtype)
        encoder_attention_mask = mask_to_bias(encoder_attention_mask, hidden_states.dtype)
        b, _, h, w = hidden_states.shape
        residual = hidden_states
        hidden_states = self.norm(hidden_states)
        if self.use_linear_projection:
            hidden_states = self.proj_in(hidden_states.permute(0, 2, 3, 1).reshape(b, h * w, -1))
        else:
            hidden_states = self.proj_in(hidden_states)
            hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(b, h * w, -1)

        for block in self.transformer_blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                hidden_states = checkpoint(block, hidden_states, attention_mask, encoder_hidden_states,
                                           encoder_attention_mask, cross_attention_kwargs, use_reentrant=False)
            else:
                hidden_states = block(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                                      cross_attention_kwargs)

        if self.use_linear_projection:
            hidden_states = self.proj_out(hidden_states)
            hidden_states = hidden_states.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        else:
            hidden_states = hidden_states.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
            hidden_states = self.proj_out(hidden_states)
        return hidden_states + residual
