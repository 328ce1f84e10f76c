"""Black Forest Labs (original FLUX.1) layout -> our FluxTransformer2DModel names.

BFL stores fused projections: a double block's `img_attn.qkv` / `txt_attn.qkv` hold Q, K and V stacked along
the output dimension, a single block's `linear1` holds Q, K, V and the MLP input projection. Our model keeps them
separate, so each of ours takes a row range of the fused tensor (read lazily, only those rows). The final
AdaLN modulation is stored (shift, scale) where ours is (scale, shift): its halves are swapped.
"""

from __future__ import annotations

import re
from typing import Any

from .plan import Plan, Source

__all__ = ["flux_plan"]

_FIXED = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
}
_DOUBLE = {
    "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
    "attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
    "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm",
    "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
    "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
}
_DOUBLE_QKV = {"attn.to_q": ("img_attn.qkv", 0), "attn.to_k": ("img_attn.qkv", 1), "attn.to_v": ("img_attn.qkv", 2),
               "attn.add_q_proj": ("txt_attn.qkv", 0), "attn.add_k_proj": ("txt_attn.qkv", 1),
               "attn.add_v_proj": ("txt_attn.qkv", 2)}
_SINGLE = {"norm.linear": "modulation.lin", "attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm",
           "proj_out": "linear2"}


def _param(module: str, param: str, norm: bool) -> str:
    # BFL's RMSNorm weights are called `scale`
    return f"{module}.scale" if norm and param == "weight" else f"{module}.{param}"


def flux_plan(shapes: dict[str, tuple[int, ...]], config: dict[str, Any], prefix: str) -> Plan:
    inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    plan: Plan = {}
    for key in shapes:
        module, _, param = key.rpartition(".")
        if module == "norm_out.linear":
            plan[key] = Source(f"{prefix}final_layer.adaLN_modulation.1.{param}", op="swap_halves")
        elif module in _FIXED:
            plan[key] = Source(f"{prefix}{_FIXED[module]}.{param}")
        elif m := re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", module):
            block, sub = m[1], m[2]
            if sub in _DOUBLE:
                plan[key] = Source(prefix + _param(f"double_blocks.{block}.{_DOUBLE[sub]}", param,
                                                   sub.startswith("attn.norm")))
            elif sub in _DOUBLE_QKV:
                fused, part = _DOUBLE_QKV[sub]
                plan[key] = Source(f"{prefix}double_blocks.{block}.{fused}.{param}",
                                   rows=(part * inner, (part + 1) * inner))
        elif m := re.fullmatch(r"single_transformer_blocks\.(\d+)\.(.+)", module):
            block, sub = m[1], m[2]
            if sub in _SINGLE:
                plan[key] = Source(prefix + _param(f"single_blocks.{block}.{_SINGLE[sub]}", param,
                                                   sub.startswith("attn.norm")))
            elif sub in ("attn.to_q", "attn.to_k", "attn.to_v"):
                part = "qkv".index(sub[-1])
                plan[key] = Source(f"{prefix}single_blocks.{block}.linear1.{param}",
                                   rows=(part * inner, (part + 1) * inner))
            elif sub == "proj_mlp":
                mlp = shapes[key][0]
                plan[key] = Source(f"{prefix}single_blocks.{block}.linear1.{param}", rows=(3 * inner, 3 * inner + mlp))
    return plan
