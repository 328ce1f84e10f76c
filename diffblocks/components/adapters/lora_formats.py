"""LoRA file layouts -> one peft-layout state dict (plus per-module alphas) per pipeline component.

Layouts read:

* diffusers / peft: ``unet.<path>.lora_A.weight`` / ``.lora_B.weight`` (prefixes ``unet``, ``transformer``,
  ``text_encoder``, ``text_encoder_2``), as the reference's ``save_lora_weights`` and our training write; older
  ``.lora.down`` / ``.lora.up`` and ``.lora_linear_layer.down`` / ``.up`` spellings too. A file without
  component prefixes (a single model's ``save_lora_adapter``) belongs to the denoiser.
* kohya / A1111: ``lora_unet_<path with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``, ``lora_te_``
  (SD 1.x), ``lora_te1_`` / ``lora_te2_`` (SDXL's two encoders). Module paths are found by flattening the
  target model's own layer names, so any layout that names diffusers modules works; SDXL's original
  ``input_blocks_*`` / ``middle_block_*`` / ``output_blocks_*`` names are mapped to the diffusers blocks
  (`sgm_names`), Flux's BFL names (``double_blocks_*``, ``single_blocks_*``) by `flux_bfl`, which splits
  fused qkv projections onto the separate ``to_q`` / ``to_k`` / ``to_v`` layers.

Keys that fit no layout or no layer are an error listing a few of them; nothing is silently dropped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .files import AdapterFileError

__all__ = ["ComponentLora", "split_lora_state_dict"]

DENOISERS = ("unet", "transformer")
_KOHYA_PREFIXES = {"lora_unet_": "denoiser", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                   "lora_te2_": "text_encoder_2"}
_PEFT_SPELLINGS = ((".lora.down.weight", ".lora_A.weight"), (".lora.up.weight", ".lora_B.weight"),
                   (".lora_linear_layer.down.weight", ".lora_A.weight"),
                   (".lora_linear_layer.up.weight", ".lora_B.weight"))


class ComponentLora:
    """The part of a LoRA file for one component: a peft-layout state dict and per-module alphas."""

    def __init__(self) -> None:
        self.state_dict: dict[str, torch.Tensor] = {}
        self.alphas: dict[str, float] = {}
        self.metadata: dict[str, Any] | None = None

    def add(self, module: str, down: torch.Tensor, up: torch.Tensor, alpha: float | None) -> None:
        self.state_dict[f"{module}.lora_A.weight"] = down
        self.state_dict[f"{module}.lora_B.weight"] = up
        if alpha is not None:
            self.alphas[module] = float(alpha)


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _is_kohya(state_dict: dict[str, Any]) -> bool:
    return any(k.startswith(tuple(_KOHYA_PREFIXES)) for k in state_dict)


def flat_names(model: nn.Module) -> dict[str, str]:
    """``down_blocks_0_attentions_0_..._to_q`` -> ``down_blocks.0.attentions.0...to_q`` for every Linear/Conv."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out: dict[str, str] = {}
    flattened_clip = not hasattr(model, "text_model") and hasattr(model, "encoder") and hasattr(model, "embeddings")
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) or ".base_layer" in name or ".lora_" in name:
            continue
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            flat = name.replace(".", "_")
            out[flat] = name
            if flattened_clip:  # transformers 5 dropped CLIPTextModel.text_model; files still name it
                out["text_model_" + flat] = name
    return out


def _denoiser(components: dict[str, nn.Module]) -> str | None:
    return next((n for n in DENOISERS if isinstance(components.get(n), nn.Module)), None)


def _split_peft(state_dict: dict[str, Any], components: dict[str, nn.Module], source: str
                ) -> dict[str, ComponentLora]:
    out: dict[str, ComponentLora] = {}
    names = sorted(components, key=len, reverse=True)  # text_encoder_2 before text_encoder
    prefixed = any(k.split(".", 1)[0] in components for k in state_dict)
    denoiser = _denoiser(components)
    unknown: list[str] = []
    alpha_keys: dict[tuple[str, str], float] = {}
    for key, tensor in state_dict.items():
        comp = next((n for n in names if key.startswith(n + ".")), None)
        rest = key[len(comp) + 1:] if comp is not None else key
        if comp is None and not prefixed:
            comp = denoiser
        if comp is None:
            unknown.append(key)
            continue
        for old, new in _PEFT_SPELLINGS:
            if rest.endswith(old):
                rest = rest[: -len(old)] + new
        if rest.endswith(".alpha"):
            alpha_keys[(comp, rest[: -len(".alpha")])] = float(tensor)
            continue
        if not any(t in rest for t in (".lora_A.", ".lora_B.", ".lora_magnitude_vector")):
            unknown.append(key)
            continue
        if comp.startswith("text_encoder") and rest.startswith("text_model.") \
                and not hasattr(components[comp], "text_model"):
            rest = rest[len("text_model."):]
        out.setdefault(comp, ComponentLora()).state_dict[rest] = tensor
    for (comp, module), alpha in alpha_keys.items():
        if comp in out:
            out[comp].alphas[module.removeprefix("text_model.")] = alpha
    if unknown:
        raise AdapterFileError(
            f"{source}: {len(unknown)} key(s) fit no LoRA layout for this pipeline's components {sorted(components)} "
            f"(expected '<component>.<module>.lora_A.weight' or kohya 'lora_unet_*.lora_down.weight'): {_few(unknown)}")
    return out


def _split_kohya(state_dict: dict[str, Any], components: dict[str, nn.Module], source: str
                 ) -> dict[str, ComponentLora]:
    from .kohya_names import flux_bfl, sgm_names

    groups: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        prefix = next((p for p in sorted(_KOHYA_PREFIXES, key=len, reverse=True) if key.startswith(p)), None)
        stem, _, part = key.partition(".")
        if prefix is None or part not in ("lora_down.weight", "lora_up.weight", "alpha"):
            unknown.append(key)
            continue
        groups.setdefault((_KOHYA_PREFIXES[prefix], stem[len(prefix):]), {})[part] = tensor
    if unknown:
        raise AdapterFileError(f"{source}: {len(unknown)} key(s) fit no kohya LoRA layout (expected "
                               f"'lora_unet_*' / 'lora_te*_*' + '.lora_down.weight' / '.lora_up.weight' / '.alpha'; "
                               f"LoCon/LoHa/LoKr files are not supported): {_few(unknown)}")
    denoiser = _denoiser(components)
    lookups: dict[str, dict[str, str]] = {}
    out: dict[str, ComponentLora] = {}
    unplaced: list[str] = []
    for (target, flat), parts in groups.items():
        comp = denoiser if target == "denoiser" else target
        model = components.get(comp) if comp else None
        if not isinstance(model, nn.Module):
            raise AdapterFileError(f"{source}: has LoRA weights for {target!r} (e.g. {flat!r}) but the pipeline has "
                                   f"no such component loaded; components: {sorted(components)}.")
        if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            raise AdapterFileError(f"{source}: {flat!r} lacks its lora_down or lora_up weight.")
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        alpha = float(parts["alpha"]) if "alpha" in parts else None
        lookup = lookups.get(comp)
        if lookup is None:
            lookup = lookups[comp] = flat_names(model)
        entry = out.setdefault(comp, ComponentLora())
        if flat in lookup:
            entry.add(lookup[flat], down, up, alpha)
            continue
        mapped = None
        if comp == "unet":
            mapped = sgm_names(flat, model)
            if mapped is not None and mapped.replace(".", "_") in lookup:
                entry.add(lookup[mapped.replace(".", "_")], down, up, alpha)
                continue
        if comp == "transformer":
            split = flux_bfl(flat, model, down, up)
            if split is not None:
                for module, (d, u) in split.items():
                    entry.add(module, d, u, alpha)
                continue
        unplaced.append(f"{target}:{flat}")
    if unplaced:
        raise AdapterFileError(f"{source}: {len(unplaced)} kohya LoRA module name(s) match no layer of the "
                               f"pipeline's components (a LoRA for another model family?): {_few(unplaced)}")
    return out


def split_lora_state_dict(state_dict: dict[str, Any], components: dict[str, nn.Module],
                          metadata: dict[str, Any] | None = None, source: str = "LoRA") -> dict[str, ComponentLora]:
    """The LoRA file's weights per component name (peft layout, alphas, the file's LoraConfig metadata)."""
    if not state_dict:
        raise AdapterFileError(f"{source}: the LoRA state dict is empty.")
    bad = [k for k, v in state_dict.items() if not torch.is_tensor(v)]
    if bad:
        raise AdapterFileError(f"{source}: entries that are not tensors: {_few(bad)}")
    parts = (_split_kohya if _is_kohya(state_dict) else _split_peft)(state_dict, components, source)
    if metadata:
        for comp, entry in parts.items():
            own = {k[len(comp) + 1:]: v for k, v in metadata.items() if k.startswith(comp + ".")}
            entry.metadata = own or None
    return parts
