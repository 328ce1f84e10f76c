"""The Stable Diffusion UNet (SD 1.x, 2.x, SDXL, inpainting), in the standard parameter layout."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..adapters.lora import lora_scale
from ..config import register_to_config
from ..modeling import BaseOutput, ModelMixin
from .attention import mask_to_bias
from .embeddings import TimestepEmbedding, Timesteps, get_activation
from .unet_2d_blocks import get_down_block, get_mid_block, get_up_block

logger = logging.getLogger(__name__)

__all__ = ["UNet2DConditionModel", "UNet2DConditionOutput"]


class UNet2DConditionOutput(BaseOutput):
    """`sample`: the model prediction, shaped like the input latents."""


def prepare_timesteps(timestep: torch.Tensor | float | int, sample: torch.Tensor) -> torch.Tensor:
    """A python number, 0-d or 1-d tensor as a 1-d tensor of length batch on the sample's device."""
    if not torch.is_tensor(timestep):
        dtype = torch.float64 if isinstance(timestep, float) else torch.int64
        if sample.device.type in ("mps", "npu") and dtype == torch.float64:
            dtype = torch.float32
        timestep = torch.tensor([timestep], dtype=dtype, device=sample.device)
    elif timestep.ndim == 0:
        timestep = timestep[None].to(sample.device)
    elif timestep.ndim == 1:
        timestep = timestep.to(sample.device)
    else:
        raise ValueError(f"timestep must be a number, a 0-d or a 1-d tensor, got shape {tuple(timestep.shape)}.")
    if timestep.shape[0] not in (1, sample.shape[0]):
        raise ValueError(f"timestep has {timestep.shape[0]} entries but the sample batch is {sample.shape[0]}.")
    return timestep.expand(sample.shape[0])


class _ConditioningEmbeddings:
    """Time, class and SDXL text_time embeddings, shared by the UNet and the ControlNet."""

    time_proj: Timesteps
    time_embedding: TimestepEmbedding
    class_embedding: nn.Module | None
    encoder_hid_proj: nn.Module | None
    config: Any

    def _build_class_embedding(self, class_embed_type: str | None, num_class_embeds: int | None, act_fn: str,
                               projection_dim: int | None, time_embed_dim: int, timestep_input_dim: int) -> None:
        if class_embed_type is None and num_class_embeds is not None:
            self.class_embedding = nn.Embedding(num_class_embeds, time_embed_dim)
        elif class_embed_type == "timestep":
            self.class_embedding = TimestepEmbedding(timestep_input_dim, time_embed_dim, act_fn=act_fn)
        elif class_embed_type == "identity":
            self.class_embedding = nn.Identity()
        elif class_embed_type in ("projection", "simple_projection"):
            if projection_dim is None:
                raise ValueError(f"class_embed_type={class_embed_type!r} needs projection_class_embeddings_input_dim.")
            self.class_embedding = (TimestepEmbedding(projection_dim, time_embed_dim) if class_embed_type == "projection"
                                    else nn.Linear(projection_dim, time_embed_dim))
        elif class_embed_type is None:
            self.class_embedding = None
        else:
            raise ValueError(f"Unsupported class_embed_type {class_embed_type!r}; expected None, 'timestep', "
                             "'identity', 'projection' or 'simple_projection'.")

    def _build_add_embedding(self, addition_embed_type: str | None, addition_time_embed_dim: int | None,
                             projection_dim: int | None, flip_sin_to_cos: bool, freq_shift: float,
                             time_embed_dim: int) -> None:
        if addition_embed_type == "text_time":
            if addition_time_embed_dim is None or projection_dim is None:
                raise ValueError("addition_embed_type='text_time' (SDXL) needs addition_time_embed_dim and "
                                 "projection_class_embeddings_input_dim in the config.")
            self.add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
            self.add_embedding = TimestepEmbedding(projection_dim, time_embed_dim)
        elif addition_embed_type is not None:
            raise ValueError(f"Unsupported addition_embed_type {addition_embed_type!r}; diffblocks supports None "
                             "and 'text_time' (SDXL).")

    def _build_encoder_hid_proj(self, encoder_hid_dim_type: str | None, encoder_hid_dim: int | None,
                                cross_attention_dim: int) -> str | None:
        if encoder_hid_dim_type is None and encoder_hid_dim is not None:
            encoder_hid_dim_type = "text_proj"
        if encoder_hid_dim_type is None:
            self.encoder_hid_proj = None
        elif encoder_hid_dim_type == "text_proj":
            if encoder_hid_dim is None:
                raise ValueError("encoder_hid_dim_type='text_proj' needs encoder_hid_dim in the config.")
            self.encoder_hid_proj = nn.Linear(encoder_hid_dim, cross_attention_dim)
        else:
            raise ValueError(f"Unsupported encoder_hid_dim_type {encoder_hid_dim_type!r}; diffblocks supports None "
                             "and 'text_proj'.")
        return encoder_hid_dim_type

    def _embed(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
               timestep_cond: torch.Tensor | None, class_labels: torch.Tensor | None,
               added_cond_kwargs: dict[str, torch.Tensor] | None, concat_class: bool = False) -> torch.Tensor:
        t_emb = self.time_proj(prepare_timesteps(timestep, sample)).to(dtype=sample.dtype)
        emb = self.time_embedding(t_emb, timestep_cond)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError(f"{type(self).__name__} has a class embedding: pass class_labels.")
            if self.config.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels).to(dtype=sample.dtype)
            class_emb = self.class_embedding(class_labels).to(dtype=sample.dtype)
            emb = torch.cat([emb, class_emb], dim=-1) if concat_class else emb + class_emb
        if self.config.addition_embed_type == "text_time":
            added_cond_kwargs = added_cond_kwargs or {}
            missing = [k for k in ("text_embeds", "time_ids") if k not in added_cond_kwargs]
            if missing:
                raise ValueError(f"{type(self).__name__} has addition_embed_type='text_time' (SDXL): "
                                 f"added_cond_kwargs must hold {missing} (got keys {sorted(added_cond_kwargs)}).")
            text_embeds = added_cond_kwargs["text_embeds"]
            time_embeds = self.add_time_proj(added_cond_kwargs["time_ids"].flatten())
            time_embeds = time_embeds.reshape(text_embeds.shape[0], -1)
            add_embeds = torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype)
            emb = emb + self.add_embedding(add_embeds)
        return emb


class UNet2DConditionModel(ModelMixin, _ConditioningEmbeddings):
    """Conditional UNet: noisy latents + timestep + text embeddings -> noise / v / sample prediction.

    Config keys are the diffusers ones, so real `unet/config.json` files load; see `register_to_config`.
    """

    _no_split_modules = ["BasicTransformerBlock", "ResnetBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                             "DownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                           "CrossAttnUpBlock2D"),
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int, ...] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple[int, ...] = 1280,
        transformer_layers_per_block: int | tuple[int, ...] | tuple[tuple[int, ...], ...] = 1,
        reverse_transformer_layers_per_block: tuple[tuple[int, ...], ...] | None = None,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        resnet_skip_time_act: bool = False,
        resnet_out_scale_factor: float = 1.0,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        time_embedding_act_fn: str | None = None,
        timestep_post_act: str | None = None,
        time_cond_proj_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: int | None = None,
        attention_type: str = "default",
        class_embeddings_concat: bool = False,
        mid_block_only_cross_attention: bool | None = None,
        cross_attention_norm: str | None = None,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__()
        n = len(down_block_types)
        if len(up_block_types) != n or len(block_out_channels) != n:
            raise ValueError(f"down_block_types ({n}), up_block_types ({len(up_block_types)}) and block_out_channels "
                             f"({len(block_out_channels)}) must have the same length.")
        if dual_cross_attention:
            raise ValueError("dual_cross_attention=True is not supported (no SD/SDXL checkpoint uses it).")
        if attention_type != "default":
            raise ValueError(f"attention_type={attention_type!r} (GLIGEN) is not supported; expected 'default'.")
        if time_embedding_type != "positional":
            raise ValueError(f"time_embedding_type={time_embedding_type!r} is not supported; expected 'positional'.")
        if norm_num_groups is None:
            raise ValueError("norm_num_groups=None is not supported by the SD block types.")
        if (isinstance(transformer_layers_per_block, (list, tuple)) and reverse_transformer_layers_per_block is None
                and any(isinstance(x, (list, tuple)) for x in transformer_layers_per_block)):
            raise ValueError("Per-layer transformer_layers_per_block lists need reverse_transformer_layers_per_block.")

        def per_block(value: Any, name: str) -> list:
            values = [value] * n if isinstance(value, (int, bool)) or value is None else list(value)
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries but there are {n} down blocks.")
            return values

        self.sample_size = sample_size
        heads = per_block(num_attention_heads or attention_head_dim, "attention_head_dim")
        cross_dims = per_block(cross_attention_dim, "cross_attention_dim")
        layers = per_block(layers_per_block, "layers_per_block")
        tf_layers = per_block(transformer_layers_per_block, "transformer_layers_per_block")
        only_cross = per_block(only_cross_attention, "only_cross_attention")

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=conv_in_kernel,
                                 padding=(conv_in_kernel - 1) // 2)
        time_embed_dim = time_embedding_dim or block_out_channels[0] * 4
        timestep_input_dim = block_out_channels[0]
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(timestep_input_dim, time_embed_dim, act_fn=act_fn,
                                                post_act_fn=timestep_post_act, cond_proj_dim=time_cond_proj_dim)
        self._encoder_hid_dim_type = self._build_encoder_hid_proj(encoder_hid_dim_type, encoder_hid_dim,
                                                                  cross_dims[0])
        self._build_class_embedding(class_embed_type, num_class_embeds, act_fn, projection_class_embeddings_input_dim,
                                    time_embed_dim, timestep_input_dim)
        self._build_add_embedding(addition_embed_type, addition_time_embed_dim, projection_class_embeddings_input_dim,
                                  flip_sin_to_cos, freq_shift, time_embed_dim)
        self.time_embed_act = get_activation(time_embedding_act_fn) if time_embedding_act_fn is not None else None
        blocks_temb = time_embed_dim * 2 if class_embeddings_concat else time_embed_dim

        self.down_blocks = nn.ModuleList()
        output_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            self.down_blocks.append(get_down_block(
                block_type, num_layers=layers[i], transformer_layers_per_block=tf_layers[i],
                in_channels=input_channel, out_channels=output_channel, temb_channels=blocks_temb,
                add_downsample=i < n - 1, resnet_eps=norm_eps, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                cross_attention_dim=cross_dims[i], num_attention_heads=heads[i],
                downsample_padding=downsample_padding, use_linear_projection=use_linear_projection,
                only_cross_attention=only_cross[i], upcast_attention=upcast_attention,
                resnet_time_scale_shift=resnet_time_scale_shift, dropout=dropout))

        self.mid_block = get_mid_block(
            mid_block_type, in_channels=block_out_channels[-1], temb_channels=blocks_temb, resnet_eps=norm_eps,
            resnet_act_fn=act_fn, resnet_groups=norm_num_groups, output_scale_factor=mid_block_scale_factor,
            transformer_layers_per_block=tf_layers[-1], num_attention_heads=heads[-1],
            cross_attention_dim=cross_dims[-1], use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention, resnet_time_scale_shift=resnet_time_scale_shift, dropout=dropout)

        self.num_upsamplers = n - 1
        rev_channels = list(reversed(block_out_channels))
        rev_heads, rev_layers, rev_cross = heads[::-1], layers[::-1], cross_dims[::-1]
        rev_tf_layers = (list(reversed(tf_layers)) if reverse_transformer_layers_per_block is None
                         else list(reverse_transformer_layers_per_block))
        rev_only_cross = only_cross[::-1]
        self.up_blocks = nn.ModuleList()
        output_channel = rev_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_output_channel, output_channel = output_channel, rev_channels[i]
            input_channel = rev_channels[min(i + 1, n - 1)]
            self.up_blocks.append(get_up_block(
                block_type, num_layers=rev_layers[i] + 1, transformer_layers_per_block=rev_tf_layers[i],
                in_channels=input_channel, out_channels=output_channel, prev_output_channel=prev_output_channel,
                temb_channels=blocks_temb, add_upsample=i < n - 1, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                resnet_groups=norm_num_groups, cross_attention_dim=rev_cross[i], num_attention_heads=rev_heads[i],
                use_linear_projection=use_linear_projection, only_cross_attention=rev_only_cross[i],
                upcast_attention=upcast_attention, resnet_time_scale_shift=resnet_time_scale_shift,
                dropout=dropout))

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_act = get_activation(act_fn)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=conv_out_kernel,
                                  padding=(conv_out_kernel - 1) // 2)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DConditionOutput | tuple[torch.Tensor]:
        """Predict for `sample` (B, C, H, W) at `timestep` given `encoder_hidden_states` (B, L, D).

        `down_block_additional_residuals` / `mid_block_additional_residual` are ControlNet outputs, added to the
        skip connections and to the mid block output. `added_cond_kwargs` holds SDXL's `text_embeds` and
        `time_ids` (and `image_embeds` with an IP-Adapter loaded). Masks are (B, L) keep-masks (1 = attend).
        `cross_attention_kwargs={"scale": s}` scales the LoRA adapters for this call.
        """
        if (down_block_additional_residuals is None) != (mid_block_additional_residual is None):
            raise ValueError("ControlNet residuals come in pairs: pass both down_block_additional_residuals and "
                             "mid_block_additional_residual, or neither.")
        up_factor = 2 ** self.num_upsamplers
        forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])
        attention_mask = mask_to_bias(attention_mask, sample.dtype)
        encoder_attention_mask = mask_to_bias(encoder_attention_mask, sample.dtype)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        emb = self._embed(sample, timestep, timestep_cond, class_labels, added_cond_kwargs,
                          concat_class=self.config.class_embeddings_concat)
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        cross_attention_kwargs = dict(cross_attention_kwargs or {})
        if self._encoder_hid_dim_type == "ip_image_proj":  # IP-Adapter: image tokens to the IP attention layers
            from ..adapters.ip_adapter import ip_adapter_tokens  # (the adapters import the models)

            encoder_hidden_states, cross_attention_kwargs["ip_hidden_states"] = ip_adapter_tokens(
                self, encoder_hidden_states, added_cond_kwargs)
        elif self.encoder_hid_proj is not None:
            encoder_hidden_states = self.encoder_hid_proj(encoder_hidden_states)
        with lora_scale(self, cross_attention_kwargs.pop("scale", None)):
            return self._forward(sample, emb, encoder_hidden_states, attention_mask, cross_attention_kwargs or None,
                                 encoder_attention_mask, down_block_additional_residuals,
                                 mid_block_additional_residual, forward_upsample_size, return_dict)

    def _forward(self, sample, emb, encoder_hidden_states, attention_mask, cross_attention_kwargs,
                 encoder_attention_mask, down_block_additional_residuals, mid_block_additional_residual,
                 forward_upsample_size, return_dict):
        sample = self.conv_in(sample)
        attn_kwargs = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                           cross_attention_kwargs=cross_attention_kwargs,
                           encoder_attention_mask=encoder_attention_mask)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if block.has_cross_attention:
                sample, res = block(sample, emb, **attn_kwargs)
            else:
                sample, res = block(sample, emb)
            skips += res

        if down_block_additional_residuals is not None:
            if len(down_block_additional_residuals) != len(skips):
                raise ValueError(f"down_block_additional_residuals has {len(down_block_additional_residuals)} "
                                 f"tensors but this UNet has {len(skips)} skip connections.")
            skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals))

        if self.mid_block is not None:
            if self.mid_block.has_cross_attention:
                sample = self.mid_block(sample, emb, **attn_kwargs)
            else:
                sample = self.mid_block(sample, emb)
        if mid_block_additional_residual is not None:
            sample = sample + mid_block_additional_residual

        for i, block in enumerate(self.up_blocks):
            count = len(block.resnets)
            res, skips = skips[-count:], skips[:-count]
            upsample_size = skips[-1].shape[2:] if forward_upsample_size and i < len(self.up_blocks) - 1 else None
            if block.has_cross_attention:
                sample = block(sample, res, emb, upsample_size=upsample_size, **attn_kwargs)
            else:
                sample = block(sample, res, emb, upsample_size=upsample_size)

        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        if not return_dict:
            return (sample,)
        return UNet2DConditionOutput(sample=sample)
