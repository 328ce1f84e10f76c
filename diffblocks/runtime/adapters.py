"""Pipeline-level adapter API on ModularPipeline (also reachable as `pipe.loader.<name>`, the documented spelling).

The adapters live on the components; these methods find the components a LoRA file addresses (``unet``,
``transformer``, ``text_encoder``, ``text_encoder_2``), apply the same adapter name to each, and keep the
components consistent: a load that fails part-way is rolled back, so the pipeline keeps working.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..components.adapters import lora as _lora
from ..components.adapters.files import AdapterFileError, adapter_metadata, load_adapter_file
from ..components.adapters.lora_formats import split_lora_state_dict
from ..components.adapters.model_mixin import LORA_WEIGHT_NAME
from .ip_adapter import IPAdapterMixin

logger = logging.getLogger(__name__)

__all__ = ["AdaptersMixin"]


class AdaptersMixin(IPAdapterMixin):
    """LoRA, textual inversion and IP-Adapter loading and control for a pipeline's components (docs/adapters.md)."""

    components: dict[str, Any]

    @property
    def loader(self) -> AdaptersMixin:
        """The pipeline itself: `pipe.loader.load_lora_weights(...)` is `pipe.load_lora_weights(...)`."""
        return self

    def _module_components(self) -> dict[str, nn.Module]:
        return {n: c for n, c in self.components.items() if isinstance(c, nn.Module)}

    def _lora_components(self) -> dict[str, nn.Module]:
        return {n: c for n, c in self._module_components().items() if _lora.list_adapters(c)}

    def _where(self) -> str:
        return type(self).__name__

    # -- loading ---------------------------------------------------------------------------------------------------
    def load_lora_weights(self, path_repo_or_dict: str | os.PathLike | dict[str, torch.Tensor],
                          weight_name: str | None = None, adapter_name: str | None = None,
                          subfolder: str | None = None, revision: str | None = None, **kwargs: Any) -> str:
        """Load a LoRA file (diffusers/peft or kohya/A1111 layout; Flux also BFL names) into the components it
        addresses; returns the adapter name (``default_N`` when not given). The new adapter becomes active."""
        if kwargs:
            raise TypeError(f"{self._where()}.load_lora_weights: unexpected arguments {sorted(kwargs)}.")
        state_dict, metadata, source = load_adapter_file(path_repo_or_dict, weight_name, subfolder,
                                                         default_names=(LORA_WEIGHT_NAME,), revision=revision)
        modules = self._module_components()
        if not modules:
            raise AdapterFileError(f"{self._where()}: load the components (pipe.load_components()) before a LoRA.")
        parts = split_lora_state_dict(state_dict, modules, adapter_metadata(metadata), source)
        if adapter_name is None:
            adapter_name = f"default_{max(len(_lora.list_adapters(modules[c])) for c in parts)}"
        taken = [c for c in parts if adapter_name in _lora.list_adapters(modules[c])]
        if taken:
            raise ValueError(f"{self._where()}.load_lora_weights: adapter name {adapter_name!r} is already used on "
                             f"{taken}; pass another adapter_name or delete_adapters({adapter_name!r}) first.")
        done: list[str] = []
        try:
            for comp, entry in parts.items():
                _lora.inject_lora(modules[comp], entry.state_dict, adapter_name, entry.alphas, entry.metadata,
                                  component=comp, source=source)
                done.append(comp)
        except Exception:
            for comp in done:  # roll back: the pipeline stays as it was
                _lora.delete_adapters(modules[comp], [adapter_name])
            raise
        logger.info("%s: LoRA %r loaded from %s into %s", self._where(), adapter_name, source, done)
        return adapter_name

    # -- which adapters, with which weights ------------------------------------------------------------------------------
    def get_list_adapters(self) -> dict[str, list[str]]:
        """{component: [adapter names]} for every component holding a LoRA."""
        return {n: _lora.list_adapters(c) for n, c in self._lora_components().items()}

    def get_active_adapters(self) -> list[str]:
        """The active adapter names (in the order given to set_adapters)."""
        active: list[str] = []
        for model in self._lora_components().values():
            active += [a for a in _lora.active_adapters(model) if a not in active]
        return active

    def set_adapters(self, adapter_names: str | Sequence[str],
                     adapter_weights: float | dict | Sequence[float | dict | None] | None = None) -> None:
        """Activate `adapter_names` with weights: one float for all, one per adapter, or per adapter a dict
        ``{"unet": 0.5, "text_encoder": 0.8}`` (components left out get 1.0; a component's value may itself be a
        dict of UNet block prefixes, e.g. ``{"down": 0.2, "up": 1.0}``)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        weights = list(adapter_weights) if isinstance(adapter_weights, (list, tuple)) else [adapter_weights] * len(names)
        if len(weights) != len(names):
            raise ValueError(f"set_adapters: {len(names)} adapter names but {len(weights)} weights.")
        listed = self.get_list_adapters()
        present = {a for adapters in listed.values() for a in adapters}
        missing = [n for n in names if n not in present]
        if missing:
            raise ValueError(f"{self._where()}.set_adapters: adapter(s) {missing} not loaded; loaded adapters: "
                             f"{listed or 'none'}.")
        for comp, model in self._lora_components().items():
            own = [(n, w) for n, w in zip(names, weights) if n in listed[comp]]
            comp_weights = []
            for _, weight in own:
                if isinstance(weight, dict) and set(weight) & set(self.components):
                    weight = weight.get(comp, 1.0)
                comp_weights.append(1.0 if weight is None else weight)
            _lora.set_adapters(model, [n for n, _ in own], comp_weights)

    def disable_lora(self) -> None:
        for model in self._lora_components().values():
            _lora.enable_lora(model, False)

    def enable_lora(self) -> None:
        for model in self._lora_components().values():
            _lora.enable_lora(model, True)

    def delete_adapters(self, adapter_names: str | Sequence[str]) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        listed = self.get_list_adapters()
        missing = [n for n in names if not any(n in a for a in listed.values())]
        if missing:
            raise ValueError(f"{self._where()}.delete_adapters: adapter(s) {missing} not loaded; loaded: "
                             f"{listed or 'none'}.")
        for comp, model in self._lora_components().items():
            own = [n for n in names if n in listed[comp]]
            if own:
                _lora.delete_adapters(model, own)

    # -- fusing ------------------------------------------------------------------------------------------------------------
    def _pick(self, components: Sequence[str] | None, what: str) -> dict[str, nn.Module]:
        holders = self._lora_components()
        if components is None:
            return holders
        unknown = [c for c in components if c not in holders]
        if unknown:
            raise ValueError(f"{self._where()}.{what}: component(s) {unknown} hold no LoRA; components with LoRA: "
                             f"{sorted(holders)}.")
        return {c: holders[c] for c in components}

    def fuse_lora(self, lora_scale: float = 1.0, components: Sequence[str] | None = None,
                  adapter_names: Sequence[str] | None = None, **kwargs: Any) -> None:
        """Merge the active (or named) adapters into the weights of `components` (default: all holding one)."""
        if kwargs:
            raise TypeError(f"{self._where()}.fuse_lora: unexpected arguments {sorted(kwargs)}.")
        for model in self._pick(components, "fuse_lora").values():
            names = None if adapter_names is None else [a for a in adapter_names if a in _lora.list_adapters(model)]
            _lora.fuse_lora(model, lora_scale, names)

    def unfuse_lora(self, components: Sequence[str] | None = None, **kwargs: Any) -> None:
        """Restore the exact pre-fusion weights of `components` (default: all)."""
        if kwargs:
            raise TypeError(f"{self._where()}.unfuse_lora: unexpected arguments {sorted(kwargs)}.")
        for model in self._pick(components, "unfuse_lora").values():
            _lora.unfuse_lora(model)

    def unload_lora_weights(self) -> None:
        """Remove every LoRA from every component (the original layers come back). Fused LoRAs stay baked into
        the weights, as in the reference; `unfuse_lora()` first restores the exact original weights."""
        for model in self._lora_components().values():
            _lora.unload_lora(model)

    # -- textual inversion -------------------------------------------------------------------------------------------------
    def _ti_pairs(self, tokenizer: Any, text_encoder: Any) -> list[tuple[Any, Any]]:
        if tokenizer is not None or text_encoder is not None:
            if tokenizer is None or text_encoder is None:
                raise ValueError(f"{self._where()}: pass both tokenizer= and text_encoder= (or neither).")
            return [(tokenizer, text_encoder)]
        pairs = [(self.components.get(t), self.components.get(e))
                 for t, e in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))]
        pairs = [(t, e) for t, e in pairs if t is not None and isinstance(e, nn.Module)]
        if not pairs:
            raise ValueError(f"{self._where()}: textual inversion needs a loaded tokenizer and text_encoder.")
        return pairs

    def load_textual_inversion(self, path_repo_or_dict: Any, token: str | None = None, tokenizer: Any = None,
                               text_encoder: Any = None, weight_name: str | None = None, subfolder: str | None = None,
                               **kwargs: Any) -> list[str]:
        """Add a textual-inversion embedding (diffusers ``{token: tensor}``, A1111 ``string_to_param`` /
        ``emb_params``, SDXL ``clip_l`` / ``clip_g``) to the tokenizer and text encoder; returns the added tokens.

        Without `tokenizer` / `text_encoder` the pipeline's are used (SDXL files fill both encoders)."""
        from ..components.adapters import textual_inversion as ti

        if kwargs:
            raise TypeError(f"{self._where()}.load_textual_inversion: unexpected arguments {sorted(kwargs)}.")
        if torch.is_tensor(path_repo_or_dict):
            state, source = path_repo_or_dict, "the given tensor"
        else:
            state, _, source = load_adapter_file(path_repo_or_dict, weight_name, subfolder,
                                                 default_names=ti.TI_WEIGHT_NAMES)
        found = ti.embeddings_from_state_dict(state, token, source)
        pairs = self._ti_pairs(tokenizer, text_encoder)
        if isinstance(found, dict):  # SDXL: clip_l -> first encoder, clip_g -> second
            if token is None:
                raise AdapterFileError(f"{source}: an SDXL (clip_l/clip_g) embedding needs token='<name>'.")
            if tokenizer is not None:
                raise ValueError(f"{source}: holds clip_l and clip_g; pass state_dict['clip_l'] or ['clip_g'] "
                                 f"with an explicit tokenizer/text_encoder, or neither.")
            if len(pairs) != 2:
                raise AdapterFileError(f"{source}: an SDXL embedding (clip_l/clip_g) needs two text encoders; "
                                       f"{self._where()} has {len(pairs)}.")
            assignments = [(pairs[0], found["clip_l"]), (pairs[1], found["clip_g"])]
            name = token
        else:
            name, embedding = found
            assignments = [(pairs[0], embedding)]
        added: list[str] = []
        for (tok, enc), embedding in assignments:
            added = ti.add_embeddings(tok, enc, name, embedding, source)
        return added

    def unload_textual_inversion(self, tokens: str | Sequence[str] | None = None, tokenizer: Any = None,
                                 text_encoder: Any = None) -> None:
        """Remove textual-inversion tokens (all by default) from the tokenizer(s) and text encoder(s)."""
        from ..components.adapters import textual_inversion as ti

        names = [tokens] if isinstance(tokens, str) else (list(tokens) if tokens is not None else None)
        for tok, enc in self._ti_pairs(tokenizer, text_encoder):
            loaded = list(getattr(enc, "_diffblocks_ti_tokens", None) or {})
            ti.remove_embeddings(tok, enc, None if names is None else [n for n in names if n in loaded])
