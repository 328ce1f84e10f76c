"""Kohya LoRA module names that are not flattened diffusers paths.

* SDXL files name UNet blocks the original (SGM/LDM) way: ``input_blocks_4_1_transformer_blocks_0_attn1_to_q``
  is ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``; the block arithmetic follows the UNet's
  ``layers_per_block`` (as the reference's ``_maybe_map_sgm_blocks_to_diffusers`` does).
* Flux files name the BFL modules: ``double_blocks_N_img_attn_qkv`` (one fused q/k/v projection) and
  ``single_blocks_N_linear1`` (fused q/k/v + MLP input). LoRA on a fused projection is split exactly onto our
  separate layers: the up matrix is cut by rows, the down matrix is shared.
"""

from __future__ import annotations

import re

import torch
from torch import nn

__all__ = ["flux_bfl", "sgm_names"]

_SGM = re.compile(r"^(input_blocks|output_blocks)_(\d+)_(\d+)_(.+)$")
_SGM_MID = re.compile(r"^middle_block_(\d+)_(.+)$")
_RESNET_PARTS = {"in_layers_2": "conv1", "out_layers_3": "conv2", "emb_layers_1": "time_emb_proj",
                 "skip_connection": "conv_shortcut"}


def _resnet_part(rest: str) -> str:
    return _RESNET_PARTS.get(rest, rest)


def sgm_names(flat: str, unet: nn.Module) -> str | None:
    """The diffusers module path for an SGM-named kohya UNet key stem, or None if it is not one."""
    mid = _SGM_MID.match(flat)
    if mid is not None:
        index, rest = int(mid.group(1)), mid.group(2)
        return {0: f"mid_block.resnets.0.{_resnet_part(rest)}", 1: f"mid_block.attentions.0.{rest}",
                2: f"mid_block.resnets.1.{_resnet_part(rest)}"}.get(index)
    match = _SGM.match(flat)
    if match is None:
        return None
    kind, outer, inner, rest = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
    layers = unet.config.layers_per_block
    layers = layers if isinstance(layers, int) else layers[0]
    if kind == "input_blocks":
        if outer == 0:
            return "conv_in" if rest in ("", "weight") else None
        block, layer = divmod(outer - 1, layers + 1)
        if layer == layers:
            return f"down_blocks.{block}.downsamplers.0.conv" if rest == "op" else None
        if inner == 0:
            return f"down_blocks.{block}.resnets.{layer}.{_resnet_part(rest)}"
        return f"down_blocks.{block}.attentions.{layer}.{rest}" if inner == 1 else None
    block, layer = divmod(outer, layers + 1)
    if inner == 0:
        return f"up_blocks.{block}.resnets.{layer}.{_resnet_part(rest)}"
    has_attention = hasattr(unet.up_blocks[block], "attentions") if block < len(unet.up_blocks) else False
    if inner == 1 and has_attention:
        return f"up_blocks.{block}.attentions.{layer}.{rest}"
    if rest == "conv":
        return f"up_blocks.{block}.upsamplers.0.conv"
    return None


_DOUBLE = re.compile(r"^double_blocks_(\d+)_(img|txt)_(attn_qkv|attn_proj|mlp_0|mlp_2|mod_lin)$")
_SINGLE = re.compile(r"^single_blocks_(\d+)_(linear1|linear2|modulation_lin)$")
_DOUBLE_TARGETS = {
    ("img", "attn_qkv"): ["attn.to_q", "attn.to_k", "attn.to_v"],
    ("txt", "attn_qkv"): ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    ("img", "attn_proj"): ["attn.to_out.0"], ("txt", "attn_proj"): ["attn.to_add_out"],
    ("img", "mlp_0"): ["ff.net.0.proj"], ("txt", "mlp_0"): ["ff_context.net.0.proj"],
    ("img", "mlp_2"): ["ff.net.2"], ("txt", "mlp_2"): ["ff_context.net.2"],
    ("img", "mod_lin"): ["norm1.linear"], ("txt", "mod_lin"): ["norm1_context.linear"],
}
_SINGLE_TARGETS = {"linear1": ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"], "linear2": ["proj_out"],
                   "modulation_lin": ["norm.linear"]}


def _base(module: nn.Module) -> nn.Module:
    get = getattr(module, "get_base_layer", None)
    return get() if get is not None else module


def flux_bfl(flat: str, transformer: nn.Module, down: torch.Tensor, up: torch.Tensor
             ) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """{module path: (down, up)} for a BFL-named kohya Flux key stem, or None if it is not one."""
    match = _DOUBLE.match(flat)
    if match is not None:
        index, stream, part = int(match.group(1)), match.group(2), match.group(3)
        prefix, targets = f"transformer_blocks.{index}.", _DOUBLE_TARGETS[(stream, part)]
    else:
        match = _SINGLE.match(flat)
        if match is None:
            return None
        index, part = int(match.group(1)), match.group(2)
        prefix, targets = f"single_transformer_blocks.{index}.", _SINGLE_TARGETS[part]
    modules = dict(transformer.named_modules())
    paths = [prefix + t for t in targets]
    if any(p not in modules for p in paths):
        return None
    sizes = [_base(modules[p]).out_features for p in paths]
    if sum(sizes) != up.shape[0]:
        return None  # reported by the caller as a name that matches no layer of the right shape
    pieces = torch.split(up, sizes, dim=0)
    return {p: (down, piece.contiguous()) for p, piece in zip(paths, pieces)}
