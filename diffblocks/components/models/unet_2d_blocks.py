"""Down, mid and up blocks of the SD / SDXL UNet and of the KL VAE.

Only the block types real SD 1.x / 2.x / SDXL checkpoints use are implemented; `get_*_block` raise a clear
error for any other type named in a config.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention, Transformer2DModel
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D

__all__ = [
    "CrossAttnDownBlock2D", "CrossAttnUpBlock2D", "DownBlock2D", "DownEncoderBlock2D", "UNetMidBlock2D",
    "UNetMidBlock2DCrossAttn", "UpBlock2D", "UpDecoderBlock2D", "get_down_block", "get_mid_block", "get_up_block",
]


def _run(module: nn.Module, use_checkpoint: bool, *args: Any) -> torch.Tensor:
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


def _per_layer(value: int | list[int], num_layers: int) -> list[int]:
    return [value] * num_layers if isinstance(value, int) else list(value)


class DownBlock2D(nn.Module):
    has_cross_attention = False

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, num_layers: int = 1,
                 dropout: float = 0.0, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, output_scale_factor: float = 1.0,
                 add_downsample: bool = True, downsample_padding: int = 1):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels,
                          temb_channels=temb_channels, eps=resnet_eps, groups=resnet_groups, dropout=dropout,
                          time_embedding_norm=resnet_time_scale_shift, non_linearity=resnet_act_fn,
                          output_scale_factor=output_scale_factor)
            for i in range(num_layers)
        ])
        self.downsamplers = (
            nn.ModuleList([Downsample2D(out_channels, out_channels, padding=downsample_padding)])
            if add_downsample else None
        )
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                **kwargs: Any) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        outputs = ()
        for resnet in self.resnets:
            hidden_states = _run(resnet, self.gradient_checkpointing, hidden_states, temb)
            outputs += (hidden_states,)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states)
            outputs += (hidden_states,)
        return hidden_states, outputs


class CrossAttnDownBlock2D(nn.Module):
    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int = 1,
                 transformer_layers_per_block: int | list[int] = 1, dropout: float = 0.0,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, num_attention_heads: int = 1, cross_attention_dim: int = 1280,
                 output_scale_factor: float = 1.0, downsample_padding: int = 1, add_downsample: bool = True,
                 use_linear_projection: bool = False, only_cross_attention: bool = False,
                 upcast_attention: bool = False):
        super().__init__()
        layers = _per_layer(transformer_layers_per_block, num_layers)
        self.resnets = nn.ModuleList()
        self.attentions = nn.ModuleList()
        for i in range(num_layers):
            self.resnets.append(ResnetBlock2D(
                in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels,
                temb_channels=temb_channels, eps=resnet_eps, groups=resnet_groups, dropout=dropout,
                time_embedding_norm=resnet_time_scale_shift, non_linearity=resnet_act_fn,
                output_scale_factor=output_scale_factor))
            self.attentions.append(Transformer2DModel(
                num_attention_heads, out_channels // num_attention_heads, in_channels=out_channels,
                num_layers=layers[i], cross_attention_dim=cross_attention_dim, norm_num_groups=resnet_groups,
                use_linear_projection=use_linear_projection, only_cross_attention=only_cross_attention,
                upcast_attention=upcast_attention))
        self.downsamplers = (
            nn.ModuleList([Downsample2D(out_channels, out_channels, padding=downsample_padding)])
            if add_downsample else None
        )
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None,
                encoder_attention_mask: torch.Tensor | None = None,
                additional_residuals: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        outputs = ()
        last = len(self.resnets) - 1
        for i, (resnet, attn) in enumerate(zip(self.resnets, self.attentions)):
            hidden_states = _run(resnet, self.gradient_checkpointing, hidden_states, temb)
            hidden_states = attn(hidden_states, encoder_hidden_states, attention_mask, encoder_attention_mask,
                                 cross_attention_kwargs)
            if i == last and additional_residuals is not None:
                hidden_states = hidden_states + additional_residuals
            outputs += (hidden_states,)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states)
            outputs += (hidden_states,)
        return hidden_states, outputs


class UNetMidBlock2DCrossAttn(nn.Module):
    has_cross_attention = True

    def __init__(self, in_channels: int, temb_channels: int, num_layers: int = 1,
                 transformer_layers_per_block: int | list[int] = 1, dropout: float = 0.0,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, num_attention_heads: int = 1, output_scale_factor: float = 1.0,
                 cross_attention_dim: int = 1280, use_linear_projection: bool = False,
                 upcast_attention: bool = False):
        super().__init__()
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        layers = _per_layer(transformer_layers_per_block, num_layers)

        def resnet() -> ResnetBlock2D:
            return ResnetBlock2D(in_channels=in_channels, out_channels=in_channels, temb_channels=temb_channels,
                                 eps=resnet_eps, groups=resnet_groups, dropout=dropout,
                                 time_embedding_norm=resnet_time_scale_shift, non_linearity=resnet_act_fn,
                                 output_scale_factor=output_scale_factor)

        self.resnets = nn.ModuleList([resnet() for _ in range(num_layers + 1)])
        self.attentions = nn.ModuleList([
            Transformer2DModel(num_attention_heads, in_channels // num_attention_heads, in_channels=in_channels,
                               num_layers=layers[i], cross_attention_dim=cross_attention_dim,
                               norm_num_groups=resnet_groups, use_linear_projection=use_linear_projection,
                               upcast_attention=upcast_attention)
            for i in range(num_layers)
        ])
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = _run(self.resnets[0], self.gradient_checkpointing, hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            hidden_states = attn(hidden_states, encoder_hidden_states, attention_mask, encoder_attention_mask,
                                 cross_attention_kwargs)
            hidden_states = _run(resnet, self.gradient_checkpointing, hidden_states, temb)
        return hidden_states


class UNetMidBlock2D(nn.Module):
    """Resnet, then (spatial self-attention, resnet) pairs: the VAE mid block."""

    has_cross_attention = False

    def __init__(self, in_channels: int, temb_channels: int | None, num_layers: int = 1, dropout: float = 0.0,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int | None = 32, add_attention: bool = True, attention_head_dim: int | None = 1,
                 output_scale_factor: float = 1.0):
        super().__init__()
        if resnet_time_scale_shift != "default":
            raise ValueError(f"UNetMidBlock2D supports resnet_time_scale_shift='default', "
                             f"got {resnet_time_scale_shift!r}.")
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        attention_head_dim = attention_head_dim or in_channels
        self.add_attention = add_attention

        def resnet() -> ResnetBlock2D:
            return ResnetBlock2D(in_channels=in_channels, out_channels=in_channels, temb_channels=temb_channels,
                                 eps=resnet_eps, groups=resnet_groups, dropout=dropout,
                                 non_linearity=resnet_act_fn, output_scale_factor=output_scale_factor)

        self.resnets = nn.ModuleList([resnet() for _ in range(num_layers + 1)])
        self.attentions = nn.ModuleList([
            Attention(in_channels, heads=in_channels // attention_head_dim, dim_head=attention_head_dim,
                      rescale_output_factor=output_scale_factor, eps=resnet_eps, norm_num_groups=resnet_groups,
                      residual_connection=True, bias=True, from_deprecated_attn_block=True)
            if add_attention else None
            for _ in range(num_layers)
        ])
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = _run(self.resnets[0], self.gradient_checkpointing, hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            if attn is not None:
                hidden_states = attn(hidden_states)
            hidden_states = _run(resnet, self.gradient_checkpointing, hidden_states, temb)
        return hidden_states


class UpBlock2D(nn.Module):
    has_cross_attention = False

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int | None,
                 num_layers: int = 1, dropout: float = 0.0, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 output_scale_factor: float = 1.0, add_upsample: bool = True):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(
                in_channels=(prev_output_channel if i == 0 else out_channels)
                + (in_channels if i == num_layers - 1 else out_channels),
                out_channels=out_channels, temb_channels=temb_channels, eps=resnet_eps, groups=resnet_groups,
                dropout=dropout, time_embedding_norm=resnet_time_scale_shift, non_linearity=resnet_act_fn,
                output_scale_factor=output_scale_factor)
            for i in range(num_layers)
        ])
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, out_channels)]) if add_upsample else None
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...],
                temb: torch.Tensor | None = None, upsample_size: tuple[int, int] | None = None,
                **kwargs: Any) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            skip = res_hidden_states_tuple[-1 - i]
            hidden_states = torch.cat([hidden_states, skip], dim=1)
            hidden_states = _run(resnet, self.gradient_checkpointing, hidden_states, temb)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states, upsample_size)
        return hidden_states


class CrossAttnUpBlock2D(nn.Module):
    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, prev_output_channel: int, temb_channels: int,
                 num_layers: int = 1, transformer_layers_per_block: int | list[int] = 1, dropout: float = 0.0,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, num_attention_heads: int = 1, cross_attention_dim: int = 1280,
                 output_scale_factor: float = 1.0, add_upsample: bool = True, use_linear_projection: bool = False,
                 only_cross_attention: bool = False, upcast_attention: bool = False):
        super().__init__()
        layers = _per_layer(transformer_layers_per_block, num_layers)
        self.resnets = nn.ModuleList()
        self.attentions = nn.ModuleList()
        for i in range(num_layers):
            self.resnets.append(ResnetBlock2D(
                in_channels=(prev_output_channel if i == 0 else out_channels)
                + (in_channels if i == num_layers - 1 else out_channels),
                out_channels=out_channels, temb_channels=temb_channels, eps=resnet_eps, groups=resnet_groups,
                dropout=dropout, time_embedding_norm=resnet_time_scale_shift, non_linearity=resnet_act_fn,
                output_scale_factor=output_scale_factor))
            self.attentions.append(Transformer2DModel(
                num_attention_heads, out_channels // num_attention_heads, in_channels=out_channels,
                num_layers=layers[i], cross_attention_dim=cross_attention_dim, norm_num_groups=resnet_groups,
                use_linear_projection=use_linear_projection, only_cross_attention=only_cross_attention,
                upcast_attention=upcast_attention))
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, out_channels)]) if add_upsample else None
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...],
                temb: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None,
                upsample_size: tuple[int, int] | None = None, attention_mask: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        for i, (resnet, attn) in enumerate(zip(self.resnets, self.attentions)):
            skip = res_hidden_states_tuple[-1 - i]
            hidden_states = torch.cat([hidden_states, skip], dim=1)
            hidden_states = _run(resnet, self.gradient_checkpointing, hidden_states, temb)
            hidden_states = attn(hidden_states, encoder_hidden_states, attention_mask, encoder_attention_mask,
                                 cross_attention_kwargs)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states, upsample_size)
        return hidden_states


class DownEncoderBlock2D(nn.Module):
    """VAE encoder stage: resnets without time embedding, then a right/bottom-padded stride-2 conv."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int = 1, dropout: float = 0.0,
                 resnet_eps: float = 1e-6, resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 output_scale_factor: float = 1.0, add_downsample: bool = True, downsample_padding: int = 1):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels,
                          temb_channels=None, eps=resnet_eps, groups=resnet_groups, dropout=dropout,
                          non_linearity=resnet_act_fn, output_scale_factor=output_scale_factor)
            for i in range(num_layers)
        ])
        self.downsamplers = (
            nn.ModuleList([Downsample2D(out_channels, out_channels, padding=downsample_padding)])
            if add_downsample else None
        )
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = _run(resnet, self.gradient_checkpointing, hidden_states, None)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states)
        return hidden_states


class UpDecoderBlock2D(nn.Module):
    """VAE decoder stage: resnets without time embedding, then nearest x2 + conv."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int = 1, dropout: float = 0.0,
                 resnet_eps: float = 1e-6, resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 output_scale_factor: float = 1.0, add_upsample: bool = True):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels,
                          temb_channels=None, eps=resnet_eps, groups=resnet_groups, dropout=dropout,
                          non_linearity=resnet_act_fn, output_scale_factor=output_scale_factor)
            for i in range(num_layers)
        ])
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, out_channels)]) if add_upsample else None
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = _run(resnet, self.gradient_checkpointing, hidden_states, None)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states)
        return hidden_states


_UNET_DOWN = ("DownBlock2D", "CrossAttnDownBlock2D")
_UNET_UP = ("UpBlock2D", "CrossAttnUpBlock2D")
_UNET_MID = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D")


def _strip(block_type: str) -> str:
    return block_type[7:] if block_type.startswith("UNetRes") else block_type


def get_down_block(down_block_type: str, *, num_layers: int, in_channels: int, out_channels: int,
                   temb_channels: int, add_downsample: bool, resnet_eps: float, resnet_act_fn: str,
                   resnet_groups: int, num_attention_heads: int, cross_attention_dim: int | None,
                   downsample_padding: int, transformer_layers_per_block: int | list[int] = 1,
                   use_linear_projection: bool = False, only_cross_attention: bool = False,
                   upcast_attention: bool = False, resnet_time_scale_shift: str = "default",
                   dropout: float = 0.0) -> nn.Module:
    block_type = _strip(down_block_type)
    common = dict(num_layers=num_layers, in_channels=in_channels, out_channels=out_channels,
                  temb_channels=temb_channels, dropout=dropout, add_downsample=add_downsample,
                  resnet_eps=resnet_eps, resnet_act_fn=resnet_act_fn, resnet_groups=resnet_groups,
                  downsample_padding=downsample_padding, resnet_time_scale_shift=resnet_time_scale_shift)
    if block_type == "DownBlock2D":
        return DownBlock2D(**common)
    if block_type == "CrossAttnDownBlock2D":
        if cross_attention_dim is None:
            raise ValueError("CrossAttnDownBlock2D needs cross_attention_dim in the config.")
        return CrossAttnDownBlock2D(**common, transformer_layers_per_block=transformer_layers_per_block,
                                    num_attention_heads=num_attention_heads, cross_attention_dim=cross_attention_dim,
                                    use_linear_projection=use_linear_projection,
                                    only_cross_attention=only_cross_attention, upcast_attention=upcast_attention)
    raise ValueError(f"Unsupported down block type {down_block_type!r}; diffblocks supports {list(_UNET_DOWN)} "
                     "(the types SD 1.x / 2.x / SDXL checkpoints use).")


def get_up_block(up_block_type: str, *, num_layers: int, in_channels: int, out_channels: int,
                 prev_output_channel: int, temb_channels: int, add_upsample: bool, resnet_eps: float,
                 resnet_act_fn: str, resnet_groups: int, num_attention_heads: int, cross_attention_dim: int | None,
                 transformer_layers_per_block: int | list[int] = 1, use_linear_projection: bool = False,
                 only_cross_attention: bool = False, upcast_attention: bool = False,
                 resnet_time_scale_shift: str = "default", dropout: float = 0.0) -> nn.Module:
    block_type = _strip(up_block_type)
    common = dict(num_layers=num_layers, in_channels=in_channels, out_channels=out_channels,
                  prev_output_channel=prev_output_channel, temb_channels=temb_channels, dropout=dropout,
                  add_upsample=add_upsample, resnet_eps=resnet_eps, resnet_act_fn=resnet_act_fn,
                  resnet_groups=resnet_groups, resnet_time_scale_shift=resnet_time_scale_shift)
    if block_type == "UpBlock2D":
        return UpBlock2D(**common)
    if block_type == "CrossAttnUpBlock2D":
        if cross_attention_dim is None:
            raise ValueError("CrossAttnUpBlock2D needs cross_attention_dim in the config.")
        return CrossAttnUpBlock2D(**common, transformer_layers_per_block=transformer_layers_per_block,
                                  num_attention_heads=num_attention_heads, cross_attention_dim=cross_attention_dim,
                                  use_linear_projection=use_linear_projection,
                                  only_cross_attention=only_cross_attention, upcast_attention=upcast_attention)
    raise ValueError(f"Unsupported up block type {up_block_type!r}; diffblocks supports {list(_UNET_UP)} "
                     "(the types SD 1.x / 2.x / SDXL checkpoints use).")


def get_mid_block(mid_block_type: str | None, *, in_channels: int, temb_channels: int, resnet_eps: float,
                  resnet_act_fn: str, resnet_groups: int, output_scale_factor: float, num_attention_heads: int,
                  cross_attention_dim: int | None, transformer_layers_per_block: int | list[int] = 1,
                  use_linear_projection: bool = False, upcast_attention: bool = False,
                  resnet_time_scale_shift: str = "default", attention_head_dim: int | None = None,
                  dropout: float = 0.0) -> nn.Module | None:
    if mid_block_type is None:
        return None
    if mid_block_type == "UNetMidBlock2DCrossAttn":
        return UNetMidBlock2DCrossAttn(
            in_channels=in_channels, temb_channels=temb_channels, transformer_layers_per_block=transformer_layers_per_block,
            dropout=dropout, resnet_eps=resnet_eps, resnet_time_scale_shift=resnet_time_scale_shift,
            resnet_act_fn=resnet_act_fn, resnet_groups=resnet_groups, num_attention_heads=num_attention_heads,
            output_scale_factor=output_scale_factor, cross_attention_dim=cross_attention_dim,
            use_linear_projection=use_linear_projection, upcast_attention=upcast_attention)
    if mid_block_type == "UNetMidBlock2D":
        return UNetMidBlock2D(
            in_channels=in_channels, temb_channels=temb_channels, num_layers=0, dropout=dropout,
            resnet_eps=resnet_eps, resnet_time_scale_shift=resnet_time_scale_shift, resnet_act_fn=resnet_act_fn,
            resnet_groups=resnet_groups, add_attention=False, output_scale_factor=output_scale_factor)
    raise ValueError(f"Unsupported mid block type {mid_block_type!r}; diffblocks supports {list(_UNET_MID)} or None.")
