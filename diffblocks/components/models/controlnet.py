"""ControlNet for the SD / SDXL UNet: a trainable copy of the UNet encoder that emits skip residuals."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import register_to_config
from ..modeling import BaseOutput, ModelMixin
from .attention import mask_to_bias
from .embeddings import TimestepEmbedding, Timesteps
from .unet_2d_blocks import UNetMidBlock2D, UNetMidBlock2DCrossAttn, get_down_block
from .unet_2d_condition import UNet2DConditionModel, _ConditioningEmbeddings

__all__ = ["ControlNetConditioningEmbedding", "ControlNetModel", "ControlNetOutput"]


class ControlNetOutput(BaseOutput):
    """`down_block_res_samples` (one per UNet skip connection) and `mid_block_res_sample`."""


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ControlNetConditioningEmbedding(nn.Module):
    """Small conv stack from the control image (pixel space) to the latent grid (8x smaller)."""

    def __init__(self, conditioning_embedding_channels: int, conditioning_channels: int = 3,
                 block_out_channels: tuple[int, ...] = (16, 32, 96, 256)):
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(block_out_channels[:-1], block_out_channels[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = _zero(nn.Conv2d(block_out_channels[-1], conditioning_embedding_channels, kernel_size=3,
                                        padding=1))

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        embedding = F.silu(self.conv_in(conditioning))
        for block in self.blocks:
            embedding = F.silu(block(embedding))
        return self.conv_out(embedding)


class ControlNetModel(ModelMixin, _ConditioningEmbeddings):
    """ControlNet (SD 1.x / 2.x / SDXL); config keys are the diffusers ones."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 3,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                             "DownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1280,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        projection_class_embeddings_input_dim: int | None = None,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__()
        n = len(down_block_types)
        if len(block_out_channels) != n:
            raise ValueError(f"block_out_channels ({len(block_out_channels)}) and down_block_types ({n}) must have "
                             "the same length.")
        if controlnet_conditioning_channel_order not in ("rgb", "bgr"):
            raise ValueError(f"controlnet_conditioning_channel_order must be 'rgb' or 'bgr', "
                             f"got {controlnet_conditioning_channel_order!r}.")
        if not isinstance(layers_per_block, int):
            raise ValueError(f"ControlNetModel needs an int layers_per_block, got {layers_per_block!r}.")

        def per_block(value: Any, name: str) -> list:
            values = [value] * n if isinstance(value, (int, bool)) else list(value)
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries but there are {n} down blocks.")
            return values

        heads = per_block(num_attention_heads or attention_head_dim, "attention_head_dim")
        tf_layers = per_block(transformer_layers_per_block, "transformer_layers_per_block")
        only_cross = per_block(only_cross_attention, "only_cross_attention")

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        time_embed_dim = block_out_channels[0] * 4
        timestep_input_dim = block_out_channels[0]
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(timestep_input_dim, time_embed_dim, act_fn=act_fn)
        self._build_encoder_hid_proj(encoder_hid_dim_type, encoder_hid_dim, cross_attention_dim)
        self._build_class_embedding(class_embed_type, num_class_embeds, "silu", projection_class_embeddings_input_dim,
                                    time_embed_dim, timestep_input_dim)
        self._build_add_embedding(addition_embed_type, addition_time_embed_dim, projection_class_embeddings_input_dim,
                                  flip_sin_to_cos, freq_shift, time_embed_dim)
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            block_out_channels[0], conditioning_channels, tuple(conditioning_embedding_out_channels))

        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList()
        output_channel = block_out_channels[0]
        self.controlnet_down_blocks.append(_zero(nn.Conv2d(output_channel, output_channel, kernel_size=1)))
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            is_final = i == n - 1
            self.down_blocks.append(get_down_block(
                block_type, num_layers=layers_per_block, transformer_layers_per_block=tf_layers[i],
                in_channels=input_channel, out_channels=output_channel, temb_channels=time_embed_dim,
                add_downsample=not is_final, resnet_eps=norm_eps, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                cross_attention_dim=cross_attention_dim, num_attention_heads=heads[i],
                downsample_padding=downsample_padding, use_linear_projection=use_linear_projection,
                only_cross_attention=only_cross[i], upcast_attention=upcast_attention,
                resnet_time_scale_shift=resnet_time_scale_shift))
            for _ in range(layers_per_block + (0 if is_final else 1)):
                self.controlnet_down_blocks.append(_zero(nn.Conv2d(output_channel, output_channel, kernel_size=1)))

        mid_channels = block_out_channels[-1]
        self.controlnet_mid_block = _zero(nn.Conv2d(mid_channels, mid_channels, kernel_size=1))
        if mid_block_type == "UNetMidBlock2DCrossAttn":
            self.mid_block = UNetMidBlock2DCrossAttn(
                in_channels=mid_channels, temb_channels=time_embed_dim, transformer_layers_per_block=tf_layers[-1],
                resnet_eps=norm_eps, resnet_act_fn=act_fn, output_scale_factor=mid_block_scale_factor,
                resnet_time_scale_shift=resnet_time_scale_shift, cross_attention_dim=cross_attention_dim,
                num_attention_heads=heads[-1], resnet_groups=norm_num_groups,
                use_linear_projection=use_linear_projection, upcast_attention=upcast_attention)
        elif mid_block_type == "UNetMidBlock2D":
            self.mid_block = UNetMidBlock2D(
                in_channels=mid_channels, temb_channels=time_embed_dim, num_layers=0, resnet_eps=norm_eps,
                resnet_act_fn=act_fn, output_scale_factor=mid_block_scale_factor, resnet_groups=norm_num_groups,
                resnet_time_scale_shift=resnet_time_scale_shift, add_attention=False)
        else:
            raise ValueError(f"Unsupported mid_block_type {mid_block_type!r}; expected 'UNetMidBlock2DCrossAttn' or "
                             "'UNetMidBlock2D'.")

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, controlnet_conditioning_channel_order: str = "rgb",
                  conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
                  load_weights_from_unet: bool = True, conditioning_channels: int = 3) -> ControlNetModel:
        """A ControlNet shaped like `unet`, its encoder initialised from the UNet's weights."""
        c = unet.config
        controlnet = cls(
            encoder_hid_dim=c.get("encoder_hid_dim"), encoder_hid_dim_type=c.get("encoder_hid_dim_type"),
            addition_embed_type=c.get("addition_embed_type"), addition_time_embed_dim=c.get("addition_time_embed_dim"),
            transformer_layers_per_block=c.get("transformer_layers_per_block", 1), in_channels=c.in_channels,
            flip_sin_to_cos=c.flip_sin_to_cos, freq_shift=c.freq_shift, down_block_types=c.down_block_types,
            only_cross_attention=c.only_cross_attention, block_out_channels=c.block_out_channels,
            layers_per_block=c.layers_per_block, downsample_padding=c.downsample_padding,
            mid_block_scale_factor=c.mid_block_scale_factor, act_fn=c.act_fn, norm_num_groups=c.norm_num_groups,
            norm_eps=c.norm_eps, cross_attention_dim=c.cross_attention_dim, attention_head_dim=c.attention_head_dim,
            num_attention_heads=c.num_attention_heads, use_linear_projection=c.use_linear_projection,
            class_embed_type=c.class_embed_type, num_class_embeds=c.num_class_embeds,
            upcast_attention=c.upcast_attention, resnet_time_scale_shift=c.resnet_time_scale_shift,
            projection_class_embeddings_input_dim=c.projection_class_embeddings_input_dim,
            mid_block_type=c.mid_block_type, controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            conditioning_channels=conditioning_channels,
        )
        if load_weights_from_unet:
            for name in ("conv_in", "time_proj", "time_embedding", "class_embedding", "add_embedding", "down_blocks",
                         "mid_block"):
                target = getattr(controlnet, name, None)
                if target is not None:
                    target.load_state_dict(getattr(unet, name).state_dict())
        return controlnet.to(device=unet.device, dtype=unet.dtype)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ) -> ControlNetOutput | tuple:
        """Residuals for the UNet's skip connections and mid block, scaled by `conditioning_scale`.

        In guess mode the residuals ramp from 0.1x (shallowest) to 1x (mid block), so the control image dominates
        even without a prompt.
        """
        if self.config.controlnet_conditioning_channel_order == "bgr":
            controlnet_cond = torch.flip(controlnet_cond, dims=[1])
        attention_mask = mask_to_bias(attention_mask, sample.dtype)
        emb = self._embed(sample, timestep, timestep_cond, class_labels, added_cond_kwargs)
        if self.encoder_hid_proj is not None:
            encoder_hidden_states = self.encoder_hid_proj(encoder_hidden_states)

        sample = self.conv_in(sample) + self.controlnet_cond_embedding(controlnet_cond)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if block.has_cross_attention:
                sample, res = block(sample, emb, encoder_hidden_states=encoder_hidden_states,
                                    attention_mask=attention_mask, cross_attention_kwargs=cross_attention_kwargs)
            else:
                sample, res = block(sample, emb)
            skips += res
        if self.mid_block.has_cross_attention:
            sample = self.mid_block(sample, emb, encoder_hidden_states=encoder_hidden_states,
                                    attention_mask=attention_mask, cross_attention_kwargs=cross_attention_kwargs)
        else:
            sample = self.mid_block(sample, emb)

        down = [conv(s) for s, conv in zip(skips, self.controlnet_down_blocks)]
        mid = self.controlnet_mid_block(sample)
        if guess_mode and not self.config.global_pool_conditions:
            scales = torch.logspace(-1, 0, len(down) + 1, device=sample.device) * conditioning_scale
            down = [s * scale for s, scale in zip(down, scales)]
            mid = mid * scales[-1]
        else:
            down = [s * conditioning_scale for s in down]
            mid = mid * conditioning_scale
        if self.config.global_pool_conditions:
            down = [torch.mean(s, dim=(2, 3), keepdim=True) for s in down]
            mid = torch.mean(mid, dim=(2, 3), keepdim=True)
        if not return_dict:
            return (down, mid)
        return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)
