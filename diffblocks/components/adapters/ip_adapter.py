"""IP-Adapter on our UNet: image projection + decoupled cross-attention (the reference's file layout).

A file holds two parts: ``image_proj`` (the projection of the CLIP image embedding to a few "image tokens") and
``ip_adapter`` (``<n>.to_k_ip.weight`` / ``<n>.to_v_ip.weight`` for every cross-attention layer, ``n`` = 1, 3,
5, ... in the reference UNet's processor order: down blocks, up blocks, mid block). Safetensors files use flat
``image_proj.`` / ``ip_adapter.`` keys; ``.bin`` files hold the nested dict.

Loading turns every cross-attention `Attention` (``attn2``) into an `IPAdapterAttention` in place (the module
object stays the same, so hooks and LoRA layers on it stay), adds `to_k_ip` / `to_v_ip` and a scale per adapter,
and sets ``unet.encoder_hid_proj`` to a `MultiIPAdapterImageProjection`; the UNet then reads
``added_cond_kwargs["image_embeds"]`` (one tensor per adapter, (batch, images, dim)). The default attention path
is untouched: `Attention.forward` is only replaced on the converted layers. Unloading restores the plain layers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.attention import Attention
from .files import AdapterFileError
from .lora import bump_adapter_version

logger = logging.getLogger(__name__)

__all__ = [
    "IPAdapterAttention", "ImageProjection", "MultiIPAdapterImageProjection", "cross_attention_layers",
    "ip_adapter_tokens", "load_ip_adapter_into_unet", "num_ip_adapters", "set_ip_adapter_scale",
    "split_ip_adapter_state_dict", "unload_ip_adapter_from_unet",
]

IP_IMAGE_PROJ = "ip_image_proj"


class ImageProjection(nn.Module):
    """The basic IP-Adapter projection: one linear layer to `num_image_text_embeds` tokens, then LayerNorm."""

    def __init__(self, image_embed_dim: int, cross_attention_dim: int, num_image_text_embeds: int = 4):
        super().__init__()
        self.num_image_text_embeds = num_image_text_embeds
        self.image_embeds = nn.Linear(image_embed_dim, num_image_text_embeds * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.image_embeds(image_embeds.to(self.image_embeds.weight.dtype))
        return self.norm(tokens.reshape(image_embeds.shape[0], self.num_image_text_embeds, -1))


class MultiIPAdapterImageProjection(nn.Module):
    """One projection per loaded adapter; maps [(batch, images, dim), ...] to [(batch, images, tokens, dim)]."""

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        self.image_projection_layers = nn.ModuleList(layers)

    def forward(self, image_embeds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(image_embeds) != len(self.image_projection_layers):
            raise ValueError(f"image_embeds holds {len(image_embeds)} tensors but {len(self.image_projection_layers)} "
                             f"IP-Adapter(s) are loaded: pass one (batch, images, dim) tensor per adapter.")
        out = []
        for embeds, layer in zip(image_embeds, self.image_projection_layers):
            batch, images = embeds.shape[0], embeds.shape[1]
            projected = layer(embeds.reshape((batch * images,) + tuple(embeds.shape[2:])))
            out.append(projected.reshape((batch, images) + tuple(projected.shape[1:])))
        return out


class IPAdapterAttention(Attention):
    """Cross-attention plus decoupled image attention: ``out = attn(q, text) + sum_i scale_i * attn(q, ip_i)``.

    Layers become this class in place (`load_ip_adapter_into_unet`); `to_k_ip` / `to_v_ip` hold one projection
    per adapter and `ip_scale` one float per adapter (0 skips that adapter's attention, as in the reference).
    """

    to_k_ip: nn.ModuleList
    to_v_ip: nn.ModuleList
    ip_scale: list[float]

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, ip_hidden_states: Sequence[torch.Tensor] | None = None,
                **kwargs: Any) -> torch.Tensor:
        if ip_hidden_states is None:
            return super().forward(hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        if len(ip_hidden_states) != len(self.to_k_ip):
            raise ValueError(f"IP-Adapter attention got {len(ip_hidden_states)} image-token tensors for "
                             f"{len(self.to_k_ip)} loaded adapter(s).")
        batch = hidden_states.shape[0]
        heads, dim_head = self.heads, self.dim_head
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, -1, heads, dim_head).transpose(1, 2)

        q = split(self.to_q(hidden_states))
        k, v = split(self.to_k(context)), split(self.to_v(context))
        if attention_mask is not None:
            if attention_mask.ndim == 3:
                attention_mask = attention_mask.unsqueeze(1)
            attention_mask = attention_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        for tokens, scale, to_k_ip, to_v_ip in zip(ip_hidden_states, self.ip_scale, self.to_k_ip, self.to_v_ip):
            if scale == 0:
                continue
            ip_out = F.scaled_dot_product_attention(q, split(to_k_ip(tokens)), split(to_v_ip(tokens)))
            out = out + scale * ip_out
        out = out.transpose(1, 2).reshape(batch, -1, heads * dim_head)
        return self.to_out[1](self.to_out[0](out))


# -- which layers --------------------------------------------------------------------------------------------------------
def cross_attention_layers(unet: nn.Module) -> Iterator[tuple[str, Attention]]:
    """(name, layer) of the UNet's cross-attention layers in the reference's processor order (down, up, mid),
    which numbers the ``ip_adapter`` keys 1, 3, 5, ..."""
    parts = [("down_blocks", unet.down_blocks), ("up_blocks", unet.up_blocks), ("mid_block", unet.mid_block)]
    for prefix, part in parts:
        if part is None:
            continue
        for name, module in part.named_modules():
            if isinstance(module, Attention) and name.endswith("attn2") and module.is_cross_attention:
                yield f"{prefix}.{name}", module


def num_ip_adapters(unet: nn.Module) -> int:
    proj = getattr(unet, "encoder_hid_proj", None)
    return len(proj.image_projection_layers) if isinstance(proj, MultiIPAdapterImageProjection) else 0


# -- file layout ---------------------------------------------------------------------------------------------------------
def split_ip_adapter_state_dict(state_dict: Mapping[str, Any], source: str) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` from the nested layout or flat ``image_proj.`` /
    ``ip_adapter.`` keys; anything else is an `AdapterFileError` naming a few keys."""
    if isinstance(state_dict.get("image_proj"), Mapping) and isinstance(state_dict.get("ip_adapter"), Mapping):
        parts = {"image_proj": dict(state_dict["image_proj"]), "ip_adapter": dict(state_dict["ip_adapter"])}
        others = [k for k in state_dict if k not in parts]
    else:
        parts = {"image_proj": {}, "ip_adapter": {}}
        others = []
        for key, value in state_dict.items():
            head, _, rest = key.partition(".")
            if head in parts and rest:
                parts[head][rest] = value
            else:
                others.append(key)
    if not parts["image_proj"] or not parts["ip_adapter"] or others:
        raise AdapterFileError(
            f"{source}: not an IP-Adapter file: expected the keys 'image_proj' and 'ip_adapter' (nested, or flat "
            f"'image_proj.*' / 'ip_adapter.*'); got {sorted(map(str, state_dict))[:6]}"
            + (f" (unexpected: {others[:4]})" if others else "") + ".")
    return parts


def _image_projection(image_proj: dict[str, torch.Tensor], cross_dim: int, source: str) -> nn.Module:
    if "proj.weight" in image_proj:
        weight = image_proj["proj.weight"]
        tokens = 4  # the basic IP-Adapter: 4 image tokens (fixed by the reference)
        if weight.shape[0] != tokens * cross_dim:
            raise AdapterFileError(f"{source}: image_proj.proj.weight has shape {tuple(weight.shape)}; this UNet's "
                                   f"cross_attention_dim {cross_dim} needs ({tokens * cross_dim}, image_embed_dim). "
                                   f"Is the adapter for another model family?")
        layer = ImageProjection(weight.shape[1], cross_dim, tokens)
        mapped = {k.replace("proj", "image_embeds"): v for k, v in image_proj.items()}
        expected = set(layer.state_dict())
        if set(mapped) != expected:
            raise AdapterFileError(f"{source}: image_proj keys {sorted(image_proj)} do not match the basic IP-Adapter "
                                   f"projection (proj.weight, proj.bias, norm.weight, norm.bias).")
        layer.load_state_dict(mapped)
        return layer
    raise AdapterFileError(f"{source}: image_proj layout {sorted(image_proj)[:5]} is not supported; diffblocks reads "
                           f"the basic IP-Adapter projection (proj.weight + norm). IP-Adapter Plus / Full / FaceID "
                           f"projections are not implemented.")


# -- load / scale / unload -----------------------------------------------------------------------------------------------
def load_ip_adapter_into_unet(unet: nn.Module, state_dicts: Sequence[dict[str, dict[str, torch.Tensor]]],
                              sources: Sequence[str]) -> None:
    """Install the adapters (replacing any loaded before): projections, then `to_k_ip` / `to_v_ip` per layer.

    Everything is built and checked before the UNet changes, so a bad file leaves the UNet as it was."""
    cross_dim = unet.config.cross_attention_dim
    cross_dim = cross_dim[0] if isinstance(cross_dim, (list, tuple)) else cross_dim
    projections = [_image_projection(sd["image_proj"], cross_dim, src) for sd, src in zip(state_dicts, sources)]
    layers = list(cross_attention_layers(unet))
    if not layers:
        raise AdapterFileError(f"{type(unet).__name__} has no cross-attention layers for an IP-Adapter.")
    per_layer: list[tuple[Attention, nn.ModuleList, nn.ModuleList]] = []
    for index, (name, attn) in enumerate(layers):
        key_id = 2 * index + 1
        to_k, to_v = nn.ModuleList(), nn.ModuleList()
        for sd, src in zip(state_dicts, sources):
            weights = sd["ip_adapter"]
            for which, holder in (("to_k_ip", to_k), ("to_v_ip", to_v)):
                key = f"{key_id}.{which}.weight"
                if key not in weights:
                    raise AdapterFileError(f"{src}: ip_adapter has no {key!r} for {name} (layer {index + 1} of "
                                           f"{len(layers)} cross-attention layers); the file has {len(weights)} keys, "
                                           f"e.g. {sorted(weights)[:4]}. Is it for another model family?")
                weight = weights[key]
                expected = (attn.to_k.out_features, attn.to_k.in_features)
                if tuple(weight.shape) != expected:
                    raise AdapterFileError(f"{src}: ip_adapter.{key} has shape {tuple(weight.shape)}, but {name} "
                                           f"needs {expected}. Is the adapter for another model family?")
                linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
                with torch.no_grad():
                    linear.weight.copy_(weight)
                holder.append(linear)
        per_layer.append((attn, to_k, to_v))
    expected_keys = {f"{2 * i + 1}.{w}.weight" for i in range(len(layers)) for w in ("to_k_ip", "to_v_ip")}
    for sd, src in zip(state_dicts, sources):
        extra = sorted(set(sd["ip_adapter"]) - expected_keys)
        if extra:
            raise AdapterFileError(f"{src}: ip_adapter keys {extra[:4]} match no cross-attention layer of this UNet "
                                   f"({len(layers)} layers). Is the adapter for another model family?")

    if num_ip_adapters(unet):
        unload_ip_adapter_from_unet(unet)
    param = next(unet.parameters())
    place = dict(device=param.device, dtype=param.dtype)
    for attn, to_k, to_v in per_layer:
        attn.__class__ = IPAdapterAttention
        attn.to_k_ip = to_k.to(**place)
        attn.to_v_ip = to_v.to(**place)
        attn.ip_scale = [1.0] * len(state_dicts)
    text_proj = unet.encoder_hid_proj
    object.__setattr__(unet, "_diffblocks_text_encoder_hid_proj", (text_proj, unet._encoder_hid_dim_type))
    unet.encoder_hid_proj = MultiIPAdapterImageProjection(projections).to(**place)
    unet._encoder_hid_dim_type = IP_IMAGE_PROJ
    if text_proj is not None:
        unet.text_encoder_hid_proj = text_proj
    bump_adapter_version(unet)
    logger.info("IP-Adapter(s) %s loaded into %d cross-attention layers", list(sources), len(per_layer))


def _expand_scale(unet: nn.Module, scale: Any) -> float | dict[str, float]:
    """A float, or the reference's per-block dict (``{"down": {"block_2": [0.0, 1.0]}, "up": ..., "mid": ...}``)
    as {attention-module prefix: scale}; blocks a dict leaves out get 0.0, as in the reference."""
    if not isinstance(scale, Mapping):
        return float(scale)
    unknown = set(scale) - {"down", "mid", "up"}
    if unknown:
        raise ValueError(f"set_ip_adapter_scale: unknown keys {sorted(unknown)}; use 'down', 'mid' and 'up'.")
    out: dict[str, float] = {}
    mid = scale.get("mid", 0.0)
    if isinstance(mid, (list, tuple)):
        if len(mid) != 1:
            raise ValueError(f"set_ip_adapter_scale: expected 1 scale for mid, got {len(mid)}.")
        mid = mid[0]
    out["mid_block."] = float(mid)
    for part, blocks in (("down", unet.down_blocks), ("up", unet.up_blocks)):
        with_attn = {f"block_{i}": block for i, block in enumerate(blocks) if hasattr(block, "attentions")}
        value = scale.get(part, 0.0)
        if not isinstance(value, Mapping):
            value = dict.fromkeys(with_attn, value)
        bad = set(value) - set(with_attn)
        if bad:
            raise ValueError(f"set_ip_adapter_scale: {part} has no attention blocks {sorted(bad)}; blocks with "
                             f"attention: {sorted(with_attn)}.")
        for key, block in with_attn.items():
            count = len(block.attentions)
            values = value.get(key, 0.0)
            values = list(values) if isinstance(values, (list, tuple)) else [values]
            if len(values) == 1:
                values = values * count
            if len(values) != count:
                raise ValueError(f"set_ip_adapter_scale: expected {count} scales for {part}.{key}, got {len(values)}.")
            index = key.split("_")[1]
            for j, v in enumerate(values):
                out[f"{part}_blocks.{index}.attentions.{j}."] = float(v)
    return out


def set_ip_adapter_scale(unet: nn.Module, scale: Any) -> None:
    """One config for all adapters or a list with one per adapter; a config is a float or a per-block dict."""
    count = num_ip_adapters(unet)
    if not count:
        raise ValueError(f"set_ip_adapter_scale: no IP-Adapter is loaded on {type(unet).__name__}; call "
                         f"load_ip_adapter(...) first.")
    configs = list(scale) if isinstance(scale, (list, tuple)) else [scale]
    if len(configs) == 1:
        configs = configs * count
    if len(configs) != count:
        raise ValueError(f"set_ip_adapter_scale: {len(configs)} scale configs for {count} loaded IP-Adapter(s).")
    expanded = [_expand_scale(unet, c) for c in configs]
    for name, attn in cross_attention_layers(unet):
        if not isinstance(attn, IPAdapterAttention):
            continue
        for i, config in enumerate(expanded):
            if isinstance(config, dict):
                attn.ip_scale[i] = next((s for p, s in config.items() if f"{name}.".startswith(p)), 0.0)
            else:
                attn.ip_scale[i] = config
    bump_adapter_version(unet)


def unload_ip_adapter_from_unet(unet: nn.Module) -> None:
    """Plain cross-attention layers and the UNet's own `encoder_hid_proj` come back (exact base model)."""
    if not num_ip_adapters(unet):
        return
    for _, attn in cross_attention_layers(unet):
        if isinstance(attn, IPAdapterAttention):
            del attn.to_k_ip, attn.to_v_ip
            del attn.ip_scale
            attn.__class__ = Attention
    text_proj, kind = getattr(unet, "_diffblocks_text_encoder_hid_proj", (None, None))
    unet.encoder_hid_proj = text_proj
    unet._encoder_hid_dim_type = kind
    if "text_encoder_hid_proj" in unet._modules:
        del unet.text_encoder_hid_proj
    object.__delattr__(unet, "_diffblocks_text_encoder_hid_proj")
    bump_adapter_version(unet)


def ip_adapter_tokens(unet: nn.Module, encoder_hidden_states: torch.Tensor,
                      added_cond_kwargs: Mapping[str, Any] | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(text states, image tokens per adapter) for a UNet with IP-Adapters loaded (called by its forward)."""
    image_embeds = (added_cond_kwargs or {}).get("image_embeds")
    if image_embeds is None:
        raise ValueError(f"{type(unet).__name__} has an IP-Adapter loaded: pass added_cond_kwargs['image_embeds'] "
                         f"(one (batch, images, dim) tensor per adapter; an IP-Adapter step in the pipeline makes "
                         f"them from ip_adapter_image), or unload_ip_adapter().")
    if isinstance(image_embeds, torch.Tensor):
        image_embeds = [image_embeds.unsqueeze(1) if image_embeds.ndim == 2 else image_embeds]
    text_proj = getattr(unet, "text_encoder_hid_proj", None)
    if text_proj is not None:
        encoder_hidden_states = text_proj(encoder_hidden_states)
    return encoder_hidden_states, unet.encoder_hid_proj(list(image_embeds))
