"""The Flux transformer (FLUX.1-dev / FLUX.1-schnell): double-stream MMDiT blocks, then single-stream blocks.

Config keys, submodule paths and parameter names are the standard `transformer/` layout, so real checkpoints load
unchanged and guider layer paths (`transformer_blocks.0`, `single_transformer_blocks.3`) name the same layers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..adapters.lora import lora_scale
from ..config import register_to_config
from ..modeling import BaseOutput, ModelMixin
from .flux_layers import (
    AdaLayerNormContinuous,
    AdaLayerNormZero,
    AdaLayerNormZeroSingle,
    CombinedTimestepGuidanceTextProjEmbeddings,
    CombinedTimestepTextProjEmbeddings,
    FeedForward,
    FluxAttention,
    FluxPosEmbed,
)

logger = logging.getLogger(__name__)

__all__ = ["FluxSingleTransformerBlock", "FluxTransformer2DModel", "FluxTransformerBlock", "Transformer2DModelOutput"]


class Transformer2DModelOutput(BaseOutput):
    """`sample`: the predicted velocity, ``(batch, image_tokens, out_channels * patch_size**2)``."""


def _clip_fp16(x: torch.Tensor) -> torch.Tensor:
    return x.clip(-65504, 65504) if x.dtype == torch.float16 else x


class FluxTransformerBlock(nn.Module):
    """Double-stream block: image and text tokens keep their own weights and attend jointly.

    Returns ``(encoder_hidden_states, hidden_states)`` (text first), as the standard implementation.
    """

    _block_output_order = ("encoder_hidden_states", "hidden_states")

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = AdaLayerNormZero(dim)
        self.norm1_context = AdaLayerNormZero(dim)
        self.attn = FluxAttention(dim, num_attention_heads, attention_head_dim, added_kv_proj_dim=dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim, dim)
        self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff_context = FeedForward(dim, dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        image_rotary_emb: torch.Tensor | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        norm_x, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=temb)
        norm_c, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(encoder_hidden_states, emb=temb)
        attn_out, context_attn_out = self.attn(
            hidden_states=norm_x, encoder_hidden_states=norm_c, image_rotary_emb=image_rotary_emb,
            **(joint_attention_kwargs or {}),
        )

        hidden_states = torch.addcmul(hidden_states, gate_msa.unsqueeze(1), attn_out)
        norm_x = torch.addcmul(shift_mlp.unsqueeze(1), self.norm2(hidden_states), (1 + scale_mlp).unsqueeze(1))
        hidden_states = torch.addcmul(hidden_states, gate_mlp.unsqueeze(1), self.ff(norm_x))

        encoder_hidden_states = torch.addcmul(encoder_hidden_states, c_gate_msa.unsqueeze(1), context_attn_out)
        norm_c = torch.addcmul(c_shift_mlp.unsqueeze(1), self.norm2_context(encoder_hidden_states),
                               (1 + c_scale_mlp).unsqueeze(1))
        encoder_hidden_states = torch.addcmul(encoder_hidden_states, c_gate_mlp.unsqueeze(1), self.ff_context(norm_c))
        return _clip_fp16(encoder_hidden_states), hidden_states


class FluxSingleTransformerBlock(nn.Module):
    """Single-stream block: text and image tokens share weights; attention and MLP run in parallel.

    Takes and returns the two streams separately, ``(encoder_hidden_states, hidden_states)``.
    """

    _block_output_order = ("encoder_hidden_states", "hidden_states")

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.mlp_hidden_dim = int(dim * mlp_ratio)
        self.norm = AdaLayerNormZeroSingle(dim)
        self.proj_mlp = nn.Linear(dim, self.mlp_hidden_dim)
        self.act_mlp = nn.GELU(approximate="tanh")
        self.proj_out = nn.Linear(dim + self.mlp_hidden_dim, dim)
        self.attn = FluxAttention(dim, num_attention_heads, attention_head_dim, pre_only=True, eps=1e-6)

    def _project_out(self, attn_out: torch.Tensor, mlp_out: torch.Tensor) -> torch.Tensor:
        """``proj_out(cat([attn_out, mlp_out], -1))``; eagerly as two GEMMs on column slices of the weight.

        The split skips writing and re-reading the ``(tokens, 5 * dim)`` concatenation. Under ``torch.compile``
        the concatenation stays (inductor writes the producers straight into it), and a wrapped `proj_out`
        (a LoRA layer, say) is called as a module so its own forward applies.
        """
        proj = self.proj_out
        if type(proj) is not nn.Linear or torch.compiler.is_compiling():
            return proj(torch.cat([attn_out, mlp_out], dim=2))
        split = attn_out.shape[-1]
        out = F.linear(attn_out, proj.weight[:, :split], proj.bias)
        flat = out.view(-1, out.shape[-1])
        flat.addmm_(mlp_out.reshape(-1, mlp_out.shape[-1]), proj.weight[:, split:].t())
        return out

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        image_rotary_emb: torch.Tensor | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_len = encoder_hidden_states.shape[1]
        residual = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        norm_x, gate = self.norm(residual, emb=temb)
        mlp_out = self.act_mlp(self.proj_mlp(norm_x))
        attn_out = self.attn(hidden_states=norm_x, image_rotary_emb=image_rotary_emb, **(joint_attention_kwargs or {}))
        out = _clip_fp16(torch.addcmul(residual, gate.unsqueeze(1), self._project_out(attn_out, mlp_out)))
        return out[:, :text_len], out[:, text_len:]


class FluxTransformer2DModel(ModelMixin):
    """The Flux transformer over packed 2x2 latent patches.

    Inputs are token sequences: ``hidden_states`` ``(B, image_tokens, in_channels)``, ``encoder_hidden_states``
    ``(B, text_tokens, joint_attention_dim)`` (T5), ``pooled_projections`` ``(B, pooled_projection_dim)`` (CLIP),
    ``timestep`` in [0, 1], position ids ``txt_ids`` / ``img_ids`` ``(tokens, 3)`` for the 3-axis RoPE, and
    ``guidance`` (the distilled guidance scale) when ``guidance_embeds`` is set (FLUX.1-dev).
    """

    _no_split_modules = ["FluxTransformerBlock", "FluxSingleTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        patch_size: int = 1,
        in_channels: int = 64,
        out_channels: int | None = None,
        num_layers: int = 19,
        num_single_layers: int = 38,
        attention_head_dim: int = 128,
        num_attention_heads: int = 24,
        joint_attention_dim: int = 4096,
        pooled_projection_dim: int = 768,
        guidance_embeds: bool = False,
        axes_dims_rope: Sequence[int] = (16, 56, 56),
    ):
        super().__init__()
        if sum(axes_dims_rope) != attention_head_dim or any(d % 2 for d in axes_dims_rope):
            raise ValueError(
                f"axes_dims_rope {list(axes_dims_rope)} must be even sizes that sum to attention_head_dim "
                f"({attention_head_dim})."
            )
        self.out_channels = out_channels or in_channels
        self.inner_dim = num_attention_heads * attention_head_dim

        self.pos_embed = FluxPosEmbed(theta=10000, axes_dim=axes_dims_rope)
        embed_cls = CombinedTimestepGuidanceTextProjEmbeddings if guidance_embeds else CombinedTimestepTextProjEmbeddings
        self.time_text_embed = embed_cls(self.inner_dim, pooled_projection_dim)
        self.context_embedder = nn.Linear(joint_attention_dim, self.inner_dim)
        self.x_embedder = nn.Linear(in_channels, self.inner_dim)

        self.transformer_blocks = nn.ModuleList(
            [FluxTransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim) for _ in range(num_layers)]
        )
        self.single_transformer_blocks = nn.ModuleList(
            [FluxSingleTransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim)
             for _ in range(num_single_layers)]
        )
        self.norm_out = AdaLayerNormContinuous(self.inner_dim, self.inner_dim, eps=1e-6)
        self.proj_out = nn.Linear(self.inner_dim, patch_size * patch_size * self.out_channels)
        self.gradient_checkpointing = False

    # -- input checks -----------------------------------------------------------------------------
    def _position_ids(self, ids: torch.Tensor | None, name: str, tokens: int) -> torch.Tensor:
        if ids is None:
            raise ValueError(f"FluxTransformer2DModel: {name} is required (position ids of shape ({tokens}, 3)).")
        if ids.ndim == 3:  # older callers pass a batch dimension; the ids are the same for every sample
            ids = ids[0]
        if ids.ndim != 2 or ids.shape[0] != tokens or ids.shape[1] != len(self.config.axes_dims_rope):
            raise ValueError(
                f"FluxTransformer2DModel: {name} must have shape ({tokens}, {len(self.config.axes_dims_rope)}) "
                f"for {tokens} tokens, got {tuple(ids.shape)}."
            )
        return ids

    @staticmethod
    def _per_sample(value: torch.Tensor | float, name: str, batch: int, device: torch.device) -> torch.Tensor:
        value = torch.as_tensor(value, device=device)
        if value.ndim == 0:
            value = value.expand(batch)
        if value.ndim != 1 or value.shape[0] not in (1, batch):
            raise ValueError(f"FluxTransformer2DModel: {name} must be a scalar or have shape ({batch},), "
                             f"got {tuple(value.shape)}.")
        return value.expand(batch)

    # -- forward ----------------------------------------------------------------------------------
    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        pooled_projections: torch.Tensor | None = None,
        timestep: torch.Tensor | float | None = None,
        img_ids: torch.Tensor | None = None,
        txt_ids: torch.Tensor | None = None,
        guidance: torch.Tensor | float | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
        controlnet_block_samples: Sequence[torch.Tensor] | None = None,
        controlnet_single_block_samples: Sequence[torch.Tensor] | None = None,
        return_dict: bool = True,
        controlnet_blocks_repeat: bool = False,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predict the flow-matching velocity of the image tokens.

        ``joint_attention_kwargs`` reach every attention call (``attention_mask``); its ``scale`` scales peft
        LoRA layers for this call. ControlNet residuals are added after the blocks, spread over them evenly
        (or repeated cyclically with ``controlnet_blocks_repeat``).
        """
        if hidden_states.ndim != 3 or hidden_states.shape[-1] != self.config.in_channels:
            raise ValueError(
                f"FluxTransformer2DModel: hidden_states must be packed latents (batch, tokens, "
                f"{self.config.in_channels}), got {tuple(hidden_states.shape)}."
            )
        if encoder_hidden_states is None or pooled_projections is None or timestep is None:
            missing = [n for n, v in (("encoder_hidden_states", encoder_hidden_states),
                                      ("pooled_projections", pooled_projections), ("timestep", timestep)) if v is None]
            raise ValueError(f"FluxTransformer2DModel: missing required inputs {missing}.")
        if self.config.guidance_embeds and guidance is None:
            raise ValueError("FluxTransformer2DModel: this model was trained with guidance embeddings "
                             "(guidance_embeds=True, e.g. FLUX.1-dev); pass guidance (the guidance scale, e.g. 3.5).")
        if not self.config.guidance_embeds and guidance is not None:
            raise ValueError("FluxTransformer2DModel: guidance was given but this model has no guidance embedder "
                             "(guidance_embeds=False, e.g. FLUX.1-schnell); pass guidance=None.")
        attn_kwargs = dict(joint_attention_kwargs or {})
        if "ip_adapter_image_embeds" in attn_kwargs:
            raise NotImplementedError("FluxTransformer2DModel: IP-Adapter image embeddings are not supported yet.")

        batch, image_tokens = hidden_states.shape[:2]
        img_ids = self._position_ids(img_ids, "img_ids", image_tokens)
        txt_ids = self._position_ids(txt_ids, "txt_ids", encoder_hidden_states.shape[1])

        with lora_scale(self, attn_kwargs.pop("scale", None)):
            hidden_states = self.x_embedder(hidden_states)
            dtype, device = hidden_states.dtype, hidden_states.device
            timestep = self._per_sample(timestep, "timestep", batch, device).to(dtype) * 1000
            if guidance is None:
                temb = self.time_text_embed(timestep, pooled_projections)
            else:
                guidance = self._per_sample(guidance, "guidance", batch, device).to(dtype) * 1000
                temb = self.time_text_embed(timestep, guidance, pooled_projections)
            encoder_hidden_states = self.context_embedder(encoder_hidden_states)
            rotary = self.pos_embed(torch.cat([txt_ids, img_ids], dim=0))
            kwargs = attn_kwargs or None

            for index, block in enumerate(self.transformer_blocks):
                encoder_hidden_states, hidden_states = self._run_block(
                    block, hidden_states, encoder_hidden_states, temb, rotary, kwargs)
                if controlnet_block_samples is not None:
                    n = len(controlnet_block_samples)
                    pick = index % n if controlnet_blocks_repeat else index // math.ceil(len(self.transformer_blocks) / n)
                    hidden_states = hidden_states + controlnet_block_samples[pick]

            for index, block in enumerate(self.single_transformer_blocks):
                encoder_hidden_states, hidden_states = self._run_block(
                    block, hidden_states, encoder_hidden_states, temb, rotary, kwargs)
                if controlnet_single_block_samples is not None:
                    interval = math.ceil(len(self.single_transformer_blocks) / len(controlnet_single_block_samples))
                    hidden_states = hidden_states + controlnet_single_block_samples[index // interval]

            output = self.proj_out(self.norm_out(hidden_states, temb))
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)

    def _run_block(self, block: nn.Module, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)
