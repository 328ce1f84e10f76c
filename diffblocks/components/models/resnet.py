"""Residual blocks and resampling layers of the SD UNet and VAE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import get_activation

__all__ = ["Downsample2D", "ResnetBlock2D", "Upsample2D"]


class ResnetBlock2D(nn.Module):
    """GroupNorm -> act -> conv, plus the time embedding, twice; 1x1 shortcut when channels change."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None = None,
        temb_channels: int | None = 512,
        groups: int = 32,
        groups_out: int | None = None,
        eps: float = 1e-6,
        dropout: float = 0.0,
        non_linearity: str = "swish",
        time_embedding_norm: str = "default",
        output_scale_factor: float = 1.0,
        use_in_shortcut: bool | None = None,
        conv_shortcut_bias: bool = True,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        if time_embedding_norm not in ("default", "scale_shift"):
            raise ValueError(f"ResnetBlock2D supports time_embedding_norm 'default' or 'scale_shift', "
                             f"got {time_embedding_norm!r}.")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.time_embedding_norm = time_embedding_norm
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        if temb_channels is not None:
            proj_out = out_channels * (2 if time_embedding_norm == "scale_shift" else 1)
            self.time_emb_proj = nn.Linear(temb_channels, proj_out)
        else:
            self.time_emb_proj = None
        self.norm2 = nn.GroupNorm(groups_out or groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nonlinearity = get_activation(non_linearity)
        use_in_shortcut = in_channels != out_channels if use_in_shortcut is None else use_in_shortcut
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=conv_shortcut_bias) if use_in_shortcut else None
        )

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.nonlinearity(self.norm1(input_tensor)))
        if self.time_emb_proj is not None and temb is not None:
            temb = self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
        if self.time_embedding_norm == "default":
            if self.time_emb_proj is not None and temb is not None:
                h = h + temb
            h = self.norm2(h)
        else:
            if temb is None or self.time_emb_proj is None:
                raise ValueError("time_embedding_norm='scale_shift' needs a time embedding (temb).")
            scale, shift = temb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(self.nonlinearity(h)))
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        out = input_tensor + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv; `padding=0` pads right/bottom by one first (the VAE encoder's convention)."""

    def __init__(self, channels: int, out_channels: int | None = None, padding: int = 1):
        super().__init__()
        self.channels = channels
        self.padding = padding
        self.conv = nn.Conv2d(channels, out_channels or channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            hidden_states = F.pad(hidden_states, (0, 1, 0, 1))
        return self.conv(hidden_states)


class Upsample2D(nn.Module):
    """Nearest x2 (or to `output_size`) then a 3x3 conv."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, out_channels or channels, kernel_size=3, padding=1)

    def forward(self, hidden_states: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        if hidden_states.shape[0] >= 64:
            hidden_states = hidden_states.contiguous()
        if output_size is None:
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        else:
            hidden_states = F.interpolate(hidden_states, size=tuple(output_size), mode="nearest")
        return self.conv(hidden_states)
