"""Component-level LoRA methods for our models (mixed into `ModelMixin`): the adapter belongs to the model, so
every pipeline sharing the model (through a ComponentsManager) sees it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from . import lora as _lora
from .files import AdapterFileError, adapter_metadata, load_adapter_file
from .lora_formats import split_lora_state_dict

__all__ = ["LoraAdapterMixin", "LORA_WEIGHT_NAME", "component_prefix"]

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_PIPELINE_PREFIXES = ("unet.", "transformer.", "controlnet.", "text_encoder.", "text_encoder_2.", "lora_unet_",
                      "lora_te")
_PREFIXES = {"UNet2DConditionModel": "unet", "FluxTransformer2DModel": "transformer", "ControlNetModel": "controlnet"}


def component_prefix(model: Any) -> str:
    """The key prefix a pipeline-level LoRA file uses for this model (``unet``, ``transformer``, ...)."""
    return _PREFIXES.get(type(model).__name__, type(model).__name__.lower())


class LoraAdapterMixin:
    """`load_lora_adapter`, `set_adapters`, `enable_lora` / `disable_lora`, `delete_adapters`, `fuse_lora` /
    `unfuse_lora`, `unload_lora`, `active_adapters`, `get_lora_state_dict`, `adapter_version` (all via peft)."""

    def load_lora_adapter(self, path_repo_or_dict: str | os.PathLike | dict[str, torch.Tensor],
                          weight_name: str | None = None, adapter_name: str | None = None,
                          subfolder: str | None = None, prefix: str | None = None, **kwargs: Any) -> str:
        """Load a LoRA (diffusers/peft or kohya layout) into this model; returns the adapter name.

        Keys of a pipeline-level file are filtered by `prefix` (default: this model's component name, e.g.
        ``unet``); text-encoder parts are ignored here (load them through the pipeline).
        """
        if kwargs:
            raise TypeError(f"{type(self).__name__}.load_lora_adapter: unexpected arguments {sorted(kwargs)}.")
        state_dict, metadata, source = load_adapter_file(path_repo_or_dict, weight_name, subfolder,
                                                         default_names=(LORA_WEIGHT_NAME,))
        prefix = prefix or component_prefix(self)
        if any(k.startswith(_PIPELINE_PREFIXES) for k in state_dict):  # a pipeline-level file: take our part
            own = {k: v for k, v in state_dict.items() if k.startswith((f"{prefix}.", "lora_unet_"))}
        else:
            own = state_dict
        if not own:
            raise AdapterFileError(f"{source}: no LoRA weights for {prefix!r} (keys start with "
                                   f"{sorted({k.split('.', 1)[0] for k in state_dict})[:5]}).")
        parts = split_lora_state_dict(own, {prefix: self}, adapter_metadata(metadata), source)
        entry = parts[prefix]
        return _lora.inject_lora(self, entry.state_dict, adapter_name, entry.alphas, entry.metadata,  # type: ignore[arg-type]
                                 component=prefix, source=source)

    def set_adapters(self, adapter_names: str | Sequence[str], weights: Any = None) -> None:
        _lora.set_adapters(self, adapter_names, weights)  # type: ignore[arg-type]

    def active_adapters(self) -> list[str]:
        return _lora.active_adapters(self)  # type: ignore[arg-type]

    def disable_lora(self) -> None:
        _lora.enable_lora(self, False)  # type: ignore[arg-type]

    def enable_lora(self) -> None:
        _lora.enable_lora(self, True)  # type: ignore[arg-type]

    def delete_adapters(self, adapter_names: str | Sequence[str]) -> None:
        _lora.delete_adapters(self, adapter_names)  # type: ignore[arg-type]

    def fuse_lora(self, lora_scale: float = 1.0, adapter_names: Sequence[str] | None = None) -> None:
        _lora.fuse_lora(self, lora_scale, adapter_names)  # type: ignore[arg-type]

    def unfuse_lora(self) -> None:
        _lora.unfuse_lora(self)  # type: ignore[arg-type]

    def unload_lora(self) -> None:
        _lora.unload_lora(self)  # type: ignore[arg-type]

    def get_lora_state_dict(self, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
        return _lora.get_lora_state_dict(self, adapter_name)  # type: ignore[arg-type]

    @property
    def adapter_version(self) -> int:
        """Changes whenever this model's adapters change (cache keys use it)."""
        return _lora.adapter_version(self)
