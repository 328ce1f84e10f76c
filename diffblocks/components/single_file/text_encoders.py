"""Text encoders in single files -> `transformers` CLIP models.

* CLIP (SD 1.x `cond_stage_model.transformer.*`, SDXL `conditioner.embedders.0.transformer.*`) is already the
  `transformers` layout under a prefix (`text_model.*`).
* OpenCLIP (SD 2.x `cond_stage_model.model.*`, SDXL `conditioner.embedders.1.model.*`, the refiner's
  `conditioner.embedders.0.model.*`) renames: `resblocks.N` -> `encoder.layers.N`, `ln_1/ln_2` -> `layer_norm1/2`,
  `mlp.c_fc/c_proj` -> `mlp.fc1/fc2`, `attn.out_proj` -> `self_attn.out_proj`, the fused `attn.in_proj_*` is split
  into Q, K, V by rows, `positional_embedding`, `token_embedding`, `ln_final`, and `text_projection` is stored
  transposed. SD 2.x uses the penultimate layer, so its encoder has one layer fewer than the file: that last
  layer is not read.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .plan import Plan, Source, load_into
from .reader import SingleFile

__all__ = ["clip_plan", "openclip_plan", "load_text_encoder"]

_OPENCLIP_FIXED = {
    "text_model.embeddings.token_embedding.weight": ("token_embedding.weight", None),
    "text_model.embeddings.position_embedding.weight": ("positional_embedding", None),
    "text_model.final_layer_norm.weight": ("ln_final.weight", None),
    "text_model.final_layer_norm.bias": ("ln_final.bias", None),
    "text_projection.weight": ("text_projection", "transpose"),
}
_OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}


def _full_name(key: str) -> str:
    """`transformers` flattened CLIPTextModel (no `text_model.` level) -> the wrapped names files use."""
    return key if key.startswith(("text_model.", "text_projection")) else f"text_model.{key}"


def clip_plan(shapes: dict[str, tuple[int, ...]], prefix: str) -> Plan:
    return {key: Source(prefix + _full_name(key)) for key in shapes}


def openclip_plan(shapes: dict[str, tuple[int, ...]], prefix: str, hidden_size: int) -> Plan:
    plan: Plan = {}
    for key in shapes:
        full = _full_name(key)
        if full in _OPENCLIP_FIXED:
            name, op = _OPENCLIP_FIXED[full]
            plan[key] = Source(prefix + name, op=op)
            continue
        m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", full)
        if m is None:
            continue
        layer, module, param = m[1], m[2], m[3]
        base = f"{prefix}transformer.resblocks.{layer}."
        if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            part = "qkv".index(module[len("self_attn.")])
            plan[key] = Source(f"{base}attn.in_proj_{param}", rows=(part * hidden_size, (part + 1) * hidden_size))
        elif module in _OPENCLIP_LAYER:
            plan[key] = Source(f"{base}{_OPENCLIP_LAYER[module]}.{param}")
    return plan


def load_text_encoder(f: SingleFile, layout: str, prefix: str, cls: type, config: Any,
                      torch_dtype: torch.dtype | None, name: str) -> tuple[Any, set[str]]:
    """Build `cls` (CLIPTextModel / CLIPTextModelWithProjection) from its `transformers` config and fill it."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = cls(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    plan = clip_plan(shapes, prefix) if layout == "clip" else openclip_plan(shapes, prefix, config.hidden_size)
    used = load_into(model, f, plan, torch_dtype or torch.get_default_dtype(), name,
                     hint="Pass config= a folder whose text encoder config matches this file.")
    if torch_dtype is not None:
        model.to(torch_dtype)
    model.eval()
    return model, used
