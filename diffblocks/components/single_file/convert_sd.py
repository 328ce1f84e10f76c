"""LDM (CompVis / Stability original) layout -> our names: UNet, VAE and ControlNet.

Each function maps one of our parameter names to its tensor in the original file, from the model's config:

* UNet: `input_blocks.N.{0,1}` are the down blocks' resnets / transformers in order (N = 1 + block *
  (layers_per_block + 1) + layer; the last N of a block holds its downsampler `op`), `middle_block.{0,1,2}` is
  resnet / transformer / resnet, `output_blocks.N` the up blocks (layers_per_block + 1 each; the upsampler is the
  block's last N, after its transformer if it has one). Resnets rename `in_layers.{0,2}` -> `norm1`/`conv1`,
  `out_layers.{0,3}` -> `norm2`/`conv2`, `emb_layers.1` -> `time_emb_proj`, `skip_connection` -> `conv_shortcut`;
  transformer internals keep their names. `time_embed.{0,2}`, `label_emb.0.{0,2}` (SDXL), `out.{0,2}`.
* VAE: `encoder.down.I.block.J`, `decoder.up.(n-1-I).block.J` (decoder blocks are stored in reverse), `mid.block_1/2`,
  `mid.attn_1.{norm,q,k,v,proj_out}` as 1x1 convolutions (squeezed to linear), `nin_shortcut`, `norm_out`.
* ControlNet: the UNet's input and middle blocks, `input_hint_block.{0,2,..}` (conditioning embedding convs,
  SiLU between them), `zero_convs.N.0` and `middle_block_out.0`.
"""

from __future__ import annotations

import re
from typing import Any

from .plan import Plan, Source

__all__ = ["unet_plan", "vae_plan", "controlnet_plan"]

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
          "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
          "class_embedding.linear_1": "label_emb.0.0", "class_embedding.linear_2": "label_emb.0.2",
          "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET.get(head, head)}.{tail}"


def _layers(config: dict[str, Any]) -> int:
    layers = config.get("layers_per_block", 2)
    if isinstance(layers, (list, tuple)):
        if len(set(layers)) != 1:
            raise ValueError(f"per-block layers_per_block {layers} have no LDM layout")
        layers = layers[0]
    return int(layers)


def _down_and_mid(key: str, layers: int) -> str | None:
    """LDM name of a down-path / middle-block parameter shared by UNet and ControlNet (None if neither)."""
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * (layers + 1) + layer
        return f"input_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    return None


def _fixed(key: str) -> str | None:
    module, _, param = key.rpartition(".")
    return f"{_FIXED[module]}.{param}" if module in _FIXED else None


def unet_plan(shapes: dict[str, tuple[int, ...]], config: dict[str, Any], prefix: str) -> Plan:
    layers = _layers(config)
    up_types = list(config.get("up_block_types", []))
    plan: Plan = {}
    for key in shapes:
        name = _fixed(key) or _down_and_mid(key, layers)
        if name is None:
            if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
                block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
                index = block * (layers + 1) + layer
                name = f"output_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
            elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
                block = int(m[1])
                slot = 2 if "CrossAttn" in up_types[block] else 1
                name = f"output_blocks.{block * (layers + 1) + layers}.{slot}.conv.{m[2]}"
            else:
                continue  # reported as a parameter with no source by load_into
        plan[key] = Source(prefix + name)
    return plan


def controlnet_plan(shapes: dict[str, tuple[int, ...]], config: dict[str, Any], prefix: str) -> Plan:
    layers = _layers(config)
    n_blocks = 2 * (len(config.get("conditioning_embedding_out_channels", (16, 32, 96, 256))) - 1)
    plan: Plan = {}
    for key in shapes:
        name = _fixed(key) or _down_and_mid(key, layers)
        if name is None:
            if m := re.fullmatch(r"controlnet_cond_embedding\.conv_in\.(.+)", key):
                name = f"input_hint_block.0.{m[1]}"
            elif m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)", key):
                name = f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"
            elif m := re.fullmatch(r"controlnet_cond_embedding\.conv_out\.(.+)", key):
                name = f"input_hint_block.{2 * (n_blocks + 1)}.{m[1]}"
            elif m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", key):
                name = f"zero_convs.{m[1]}.0.{m[2]}"
            elif m := re.fullmatch(r"controlnet_mid_block\.(.+)", key):
                name = f"middle_block_out.0.{m[1]}"
            else:
                continue
        plan[key] = Source(prefix + name)
    return plan


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_plan(shapes: dict[str, tuple[int, ...]], config: dict[str, Any], prefix: str) -> Plan:
    n_up = len(config.get("up_block_types", [None] * 4))
    plan: Plan = {}
    for key in shapes:
        op = None
        if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
            name = f"{m[1]}.norm_out.{m[2]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            name = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            name = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            name = f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            name = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            name = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", key):
            name = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
            op = "squeeze" if m[2] != "group_norm" else None
        else:
            name = key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names
        plan[key] = Source(prefix + name, op=op)
    return plan
