"""LoRA adapters on one model (our UNet / Flux transformer, or a transformers text encoder), through peft.

Every operation here works on any `torch.nn.Module`: peft injects its `lora.Linear` / `lora.Conv2d` wrappers
around the targeted layers (`inject_adapter_in_model`) and loads their weights (`set_peft_model_state_dict`);
the model keeps `peft_config` (adapter name -> `LoraConfig`), which the ComponentsManager table shows.

State dicts here are the peft layout without a component prefix: ``<module path>.lora_A.weight`` /
``.lora_B.weight``. Alphas (kohya files) are per module path.

Every change of the adapter state (load, weights, enable/disable, delete, fuse, unfuse, unload) bumps
``model._diffblocks_adapter_version``; `adapter_version(model)` reads it, so caches keyed on a component can
tell a LoRA'd model from the same model without it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .files import AdapterFileError

logger = logging.getLogger(__name__)

__all__ = [
    "VERSION_ATTR", "active_adapters", "adapter_version", "bump_adapter_version", "delete_adapters",
    "enable_lora", "fuse_lora", "get_lora_state_dict", "inject_lora", "list_adapters", "lora_config_metadata",
    "lora_layers", "lora_scale", "set_adapters", "unfuse_lora", "unload_lora",
]

VERSION_ATTR = "_diffblocks_adapter_version"
_FUSED_BACKUP_ATTR = "_diffblocks_unfused_weights"


def adapter_version(model: Any) -> int:
    """A counter that changes whenever the model's adapters change (0 for a model never touched)."""
    return int(getattr(model, VERSION_ATTR, 0))


def bump_adapter_version(model: Any) -> None:
    object.__setattr__(model, VERSION_ATTR, adapter_version(model) + 1)


def lora_layers(model: nn.Module) -> Iterator[tuple[str, Any]]:
    """(module path, peft LoRA layer) pairs of `model`."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def _name(model: nn.Module) -> str:
    return type(model).__name__


def list_adapters(model: nn.Module) -> list[str]:
    config = getattr(model, "peft_config", None)
    return list(config) if isinstance(config, dict) else []


def active_adapters(model: nn.Module) -> list[str]:
    for _, layer in lora_layers(model):
        return list(layer.active_adapters)
    return []


def _check_names(model: nn.Module, names: Sequence[str], what: str) -> None:
    present = list_adapters(model)
    missing = [n for n in names if n not in present]
    if missing:
        raise ValueError(f"{what}: adapter(s) {missing} not loaded on {_name(model)}; loaded: {present or 'none'}.")


# -- loading ---------------------------------------------------------------------------------------------------------
def _module_of(key: str) -> str:
    for tag in (".lora_A.", ".lora_B.", ".lora_magnitude_vector"):
        if tag in key:
            return key.split(tag)[0]
    raise AdapterFileError(f"{key!r} is not a peft LoRA key (expected '<module>.lora_A.weight' / '.lora_B.weight').")


def _pattern(name: str) -> str:
    return "^" + re.escape(name) + "$"


def _build_config(state_dict: dict[str, torch.Tensor], alphas: dict[str, float] | None,
                  metadata: dict[str, Any] | None) -> Any:
    """The LoraConfig for a state dict: from the file's metadata when present, else inferred as the reference does
    (most common rank as `r`, others in `rank_pattern`; alpha = rank unless alphas are given)."""
    from peft import LoraConfig

    modules = sorted({_module_of(k) for k in state_dict})
    if metadata:
        config = dict(metadata)
        config["target_modules"] = "|".join(_pattern(m) for m in modules)
        try:
            return LoraConfig(**config)
        except TypeError as exc:
            raise AdapterFileError(f"LoRA metadata is not a valid peft LoraConfig ({exc}).") from None
    ranks = {m: int(state_dict[f"{m}.lora_B.weight"].shape[1]) for m in modules if f"{m}.lora_B.weight" in state_dict}
    missing = [m for m in modules if m not in ranks]
    if missing:
        raise AdapterFileError(f"LoRA weights for {missing[:5]} have no lora_B (up) matrix.")
    r = collections.Counter(ranks.values()).most_common(1)[0][0]
    rank_pattern = {_pattern(m): v for m, v in ranks.items() if v != r}
    if alphas:
        alpha = collections.Counter(alphas.values()).most_common(1)[0][0]
        alpha_pattern = {_pattern(m): float(a) for m, a in alphas.items() if a != alpha}
        for m in modules:  # modules without an alpha in the file behave as alpha == rank
            if m not in alphas and ranks[m] != alpha:
                alpha_pattern[_pattern(m)] = float(ranks[m])
    else:
        alpha, alpha_pattern = r, dict(rank_pattern)
    return LoraConfig(
        r=r, lora_alpha=float(alpha), rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
        target_modules="|".join(_pattern(m) for m in modules),
        use_dora=any("lora_magnitude_vector" in k for k in state_dict),
        lora_bias=any(".lora_B." in k and k.endswith(".bias") for k in state_dict),
    )


def _check_targets(model: nn.Module, state_dict: dict[str, torch.Tensor], component: str, source: str) -> None:
    """Every LoRA key names a Linear/Conv layer of the model with matching shapes; else one clear error."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    modules = dict(model.named_modules())
    unknown, mismatched = [], []
    for key, tensor in state_dict.items():
        path = _module_of(key)
        module = modules.get(path)
        if isinstance(module, BaseTunerLayer):
            module = module.get_base_layer()
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            unknown.append(key)
            continue
        fan_in = module.in_features if isinstance(module, nn.Linear) else module.in_channels
        fan_out = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        if ".lora_A." in key and key.endswith(".weight") and tensor.shape[1] != fan_in:
            mismatched.append(f"{key}: {tuple(tensor.shape)} but {path} takes {fan_in} inputs")
        elif ".lora_B." in key and key.endswith(".weight") and tensor.shape[0] != fan_out:
            mismatched.append(f"{key}: {tuple(tensor.shape)} but {path} has {fan_out} outputs")
        elif ".lora_B." in key and key.endswith(".weight"):
            down = state_dict.get(key.replace(".lora_B.", ".lora_A."))
            if down is not None and down.shape[0] != tensor.shape[1]:
                mismatched.append(f"{key}: rank {tensor.shape[1]} but its lora_A has rank {down.shape[0]}")
    if unknown:
        raise AdapterFileError(
            f"{source}: {len(unknown)} LoRA key(s) for {component!r} ({_name(model)}) name no Linear/Conv layer of "
            f"that model, e.g. {unknown[:4]}. Is this LoRA for another model family?")
    if mismatched:
        raise AdapterFileError(
            f"{source}: LoRA shapes do not fit {component!r} ({_name(model)}): {mismatched[:4]}"
            + (f" and {len(mismatched) - 4} more" if len(mismatched) > 4 else "")
            + ". Is this LoRA for another model family or size?")


def inject_lora(model: nn.Module, state_dict: dict[str, torch.Tensor], adapter_name: str | None = None,
                alphas: dict[str, float] | None = None, metadata: dict[str, Any] | None = None,
                component: str = "model", source: str = "LoRA") -> str:
    """Add a LoRA adapter to `model` from a peft-layout state dict (no component prefix); returns its name.

    The new adapter becomes the active one (as in the reference); `set_adapters` combines several.
    """
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    if not state_dict:
        raise AdapterFileError(f"{source}: no LoRA weights for {component!r}.")
    if getattr(model, _FUSED_BACKUP_ATTR, None):
        raise RuntimeError(f"{component!r} has a fused LoRA: call unfuse_lora() before loading another adapter.")
    if adapter_name is None:
        adapter_name = f"default_{len(list_adapters(model))}"
    if adapter_name in list_adapters(model):
        raise ValueError(f"Adapter name {adapter_name!r} is already in use on {component!r}: pick another "
                         f"adapter_name or delete_adapters({adapter_name!r}) first.")
    _check_targets(model, state_dict, component, source)
    config = _build_config(state_dict, alphas, metadata)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    try:
        with warnings.catch_warnings():  # peft warns that a second adapter is a second adapter
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(config, model, adapter_name=adapter_name)
        result = set_peft_model_state_dict(model, state_dict, adapter_name=adapter_name)
    except Exception:
        _remove_adapter(model, adapter_name)
        raise
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if ".lora_" in k]
    missing = [k for k in getattr(result, "missing_keys", []) if ".lora_" in k and f".{adapter_name}." in k]
    if unexpected or missing:
        _remove_adapter(model, adapter_name)
        raise AdapterFileError(f"{source}: LoRA for {component!r} did not load cleanly; unexpected keys "
                               f"{unexpected[:4]}, missing keys {missing[:4]}.")
    for _, layer in lora_layers(model):  # adapter weights follow the model's device and dtype
        for sub in (layer.lora_A, layer.lora_B):
            if adapter_name in sub:
                weight = layer.get_base_layer().weight
                sub[adapter_name].to(device=weight.device, dtype=dtype if weight.is_floating_point() else None)
    _activate(model, [adapter_name], None)
    bump_adapter_version(model)
    return adapter_name


def _remove_adapter(model: nn.Module, adapter_name: str) -> None:
    for _, layer in lora_layers(model):
        if adapter_name in layer.lora_A or adapter_name in getattr(layer, "scaling", {}):
            layer.delete_adapter(adapter_name)
    config = getattr(model, "peft_config", None)
    if isinstance(config, dict):
        config.pop(adapter_name, None)
        if not config:
            _drop_peft_config(model)


def _drop_peft_config(model: nn.Module) -> None:
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in model.__dict__:
            delattr(model, attr)


# -- weights and activation ---------------------------------------------------------------------------------------------
def _weight_for(weight: Any, module_name: str) -> float:
    """A float, or a dict of module-path prefixes / substrings -> float (UNet blocks: "down", "mid", "up",
    "down_blocks.1", ...); modules no key matches get 1.0."""
    if not isinstance(weight, dict):
        return float(weight)
    best, best_len = 1.0, -1
    for key, value in weight.items():
        prefixes = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}
        prefix = prefixes.get(key, key)
        if (module_name.startswith(prefix) or f".{key}." in f".{module_name}.") and len(prefix) > best_len:
            best, best_len = value, len(prefix)
    if isinstance(best, dict):
        raise ValueError(f"adapter weight for {module_name!r}: nested dicts are not supported, got {best!r}.")
    return float(best)


def _activate(model: nn.Module, names: Sequence[str], weights: Sequence[Any] | None) -> None:
    for module_name, layer in lora_layers(model):
        layer.set_adapter(list(names))
        if weights is None:
            continue
        for name, weight in zip(names, weights):
            if name in layer.scaling:
                layer.set_scale(name, _weight_for(weight, module_name))


def set_adapters(model: nn.Module, names: str | Sequence[str], weights: Any = None) -> None:
    """Activate `names` with their weights (a float, a list with one float or dict per adapter; default 1.0)."""
    names = [names] if isinstance(names, str) else list(names)
    _check_names(model, names, f"set_adapters on {_name(model)}")
    if weights is None:
        weights = [1.0] * len(names)
    elif not isinstance(weights, (list, tuple)):
        weights = [weights] * len(names)
    if len(weights) != len(names):
        raise ValueError(f"set_adapters: {len(names)} adapter names but {len(weights)} weights.")
    _activate(model, names, [1.0 if w is None else w for w in weights])
    bump_adapter_version(model)


def enable_lora(model: nn.Module, enabled: bool = True) -> None:
    for _, layer in lora_layers(model):
        layer.enable_adapters(enabled)
    bump_adapter_version(model)


def delete_adapters(model: nn.Module, names: str | Sequence[str]) -> None:
    names = [names] if isinstance(names, str) else list(names)
    _check_names(model, names, f"delete_adapters on {_name(model)}")
    for name in names:
        _remove_adapter(model, name)
    if not list_adapters(model):
        unload_lora(model)
    bump_adapter_version(model)


@contextlib.contextmanager
def lora_scale(models: nn.Module | Sequence[nn.Module | None] | None, scale: float | None) -> Iterator[None]:
    """Multiply every active LoRA's scaling in `models` by `scale` for the duration (the per-call
    ``{"scale": s}`` of ``cross_attention_kwargs`` / ``joint_attention_kwargs``); the exact previous scalings
    come back afterwards."""
    if models is None or scale is None or float(scale) == 1.0:
        yield
        return
    saved = []
    for model in [models] if isinstance(models, nn.Module) else models:
        if model is None:
            continue
        for _, layer in lora_layers(model):
            saved.append((layer, dict(layer.scaling)))
            layer.scale_layer(float(scale))
    try:
        yield
    finally:
        for layer, scaling in saved:
            layer.scaling.clear()
            layer.scaling.update(scaling)


# -- fusing and unloading -----------------------------------------------------------------------------------------------
def fuse_lora(model: nn.Module, lora_scale: float = 1.0, adapter_names: Sequence[str] | None = None) -> None:
    """Merge the active (or named) adapters into the base weights, scaled by `lora_scale`.

    The unmerged base weights are kept on the CPU so `unfuse_lora` restores them exactly.
    """
    layers = list(lora_layers(model))
    if not layers:
        raise ValueError(f"fuse_lora: {_name(model)} has no LoRA adapter loaded.")
    if adapter_names is not None:
        _check_names(model, list(adapter_names), f"fuse_lora on {_name(model)}")
    backup: dict[str, torch.Tensor] = getattr(model, _FUSED_BACKUP_ATTR, None) or {}
    for module_name, layer in layers:
        base = layer.get_base_layer()
        for pname, param in base.named_parameters(recurse=False):
            backup.setdefault(f"{module_name}.{pname}", param.detach().to("cpu", copy=True))
        saved = dict(layer.scaling)
        if lora_scale != 1.0:
            layer.scale_layer(lora_scale)
        layer.merge(adapter_names=list(adapter_names) if adapter_names is not None else None)
        layer.scaling.clear()
        layer.scaling.update(saved)
    object.__setattr__(model, _FUSED_BACKUP_ATTR, backup)
    bump_adapter_version(model)


def unfuse_lora(model: nn.Module) -> None:
    """Undo `fuse_lora`: the base weights get back their exact pre-fusion values."""
    backup: dict[str, torch.Tensor] | None = getattr(model, _FUSED_BACKUP_ATTR, None)
    for module_name, layer in lora_layers(model):
        if not layer.merged:
            continue
        base = layer.get_base_layer()
        layer.merged_adapters.clear()
        for pname, param in base.named_parameters(recurse=False):
            key = f"{module_name}.{pname}"
            if backup is None or key not in backup:
                raise RuntimeError(f"unfuse_lora: no saved base weight for {key} of {_name(model)}.")
            with torch.no_grad():
                param.copy_(backup[key].to(param.device))
    if backup is not None:
        object.__setattr__(model, _FUSED_BACKUP_ATTR, None)
    bump_adapter_version(model)


def unload_lora(model: nn.Module) -> None:
    """Remove every LoRA layer, putting the original modules back.

    As in the reference, weights fused by `fuse_lora` stay fused (``fuse_lora(); unload_lora()`` bakes a LoRA
    into the model); call `unfuse_lora` first to get the exact original weights back.
    """
    object.__setattr__(model, _FUSED_BACKUP_ATTR, None)
    for module_name, layer in list(lora_layers(model)):
        parent_name, _, child = module_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    _drop_peft_config(model)
    bump_adapter_version(model)


# -- saving -------------------------------------------------------------------------------------------------------------
def get_lora_state_dict(model: nn.Module, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """The peft-layout LoRA weights of one adapter (default: the first active one), no component prefix."""
    from peft import get_peft_model_state_dict

    names = list_adapters(model)
    if not names:
        raise ValueError(f"{_name(model)} has no LoRA adapter.")
    if adapter_name is None:
        active = active_adapters(model)
        adapter_name = active[0] if active else names[0]
    _check_names(model, [adapter_name], "get_lora_state_dict")
    return get_peft_model_state_dict(model, adapter_name=adapter_name)


def lora_config_metadata(model: nn.Module, adapter_name: str) -> dict[str, Any]:
    """The adapter's LoraConfig as the JSON-able dict the reference stores in `lora_adapter_metadata`."""
    config = model.peft_config[adapter_name].to_dict()
    keep = ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "target_modules", "use_dora", "lora_bias",
            "use_rslora", "init_lora_weights")
    out = {k: config[k] for k in keep if k in config}
    if isinstance(out.get("target_modules"), (set, tuple)):
        out["target_modules"] = sorted(out["target_modules"])
    return out
