"""The model base class: config + standard Hub checkpoint layout for our PyTorch models.

Checkpoints are the diffusers layout (`config.json` + `diffusion_pytorch_model[.variant].safetensors`, or shards
listed in `diffusion_pytorch_model.safetensors[.variant].index.json`) with the same parameter names, so folders and
repos users already have load unchanged. Loading builds the module without allocating weights (meta device) and
takes each tensor from the memory-mapped file (`state_dict.load_state_dict`) to its final dtype and device, so the
host never holds more than one copy of the weights.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters.model_mixin import LoraAdapterMixin
from .config import ConfigMixin
from .hub import resolve_file, upload_folder
from .placement import resolve_placement
from .state_dict import CheckpointError, load_state_dict, safetensors_shapes

logger = logging.getLogger(__name__)

__all__ = ["BaseOutput", "CheckpointError", "ModelMixin", "read_safetensors", "weights_file_name"]

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"

class BaseOutput(OrderedDict):
    """Model outputs readable as attributes (`out.sample`), by key, or by position (`out[0]`)."""

    def __init__(self, **fields: Any) -> None:
        super().__init__((k, v) for k, v in fields.items())

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from None

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, int):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple:
        return tuple(self.values())


def weights_file_name(name: str, variant: str | None) -> str:
    """`diffusion_pytorch_model.safetensors` -> `diffusion_pytorch_model.fp16.safetensors` (diffusers' rule)."""
    if not variant:
        return name
    parts = name.split(".")
    return ".".join(parts[:-1] + [variant] + parts[-1:])


def read_safetensors(path: str | os.PathLike, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A safetensors file as a state dict (memory-mapped; see `load_state_dict`, which also takes a device)."""
    return load_state_dict(Path(path), dtype=dtype)


def _format_keys(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys) - limit} more)" if len(keys) > limit else shown


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)\s*", size.upper().replace("IB", "iB"))
    if not match:
        raise ValueError(f"max_shard_size {size!r} is not a size such as '5GB', '500MB' or a byte count.")
    number, unit = float(match.group(1)), match.group(2)
    factors = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
    return int(number * factors[unit])


class ModelMixin(LoraAdapterMixin, nn.Module, ConfigMixin):
    """Base of our models: config handling, checkpoint I/O in the standard layout, small helpers."""

    config_name = "config.json"
    _supports_gradient_checkpointing = True
    # module classes a device map must keep on one device (None: device_map="auto" is not supported)
    _no_split_modules: list[str] | None = None

    # -- properties ---------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def num_parameters(self, only_trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    def get_memory_footprint(self, include_buffers: bool = True) -> int:
        """Bytes held by parameters (and buffers)."""
        tensors = list(self.parameters()) + (list(self.buffers()) if include_buffers else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    # -- gradient checkpointing ---------------------------------------------------------------
    def _set_gradient_checkpointing(self, enabled: bool) -> None:
        if enabled and not self._supports_gradient_checkpointing:
            raise ValueError(f"{type(self).__name__} does not support gradient checkpointing.")
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = enabled

    def enable_gradient_checkpointing(self) -> None:
        """Recompute block activations in the backward pass (less memory when training)."""
        self._set_gradient_checkpointing(True)

    def disable_gradient_checkpointing(self) -> None:
        self._set_gradient_checkpointing(False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    # -- checkpoint keys ----------------------------------------------------------------------
    def _convert_checkpoint_keys(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename keys written by older versions of the layout (old VAE attention names)."""
        for name, module in self.named_modules():
            if not getattr(module, "_from_deprecated_attn_block", False):
                continue
            for old, new in (("query", "to_q"), ("key", "to_k"), ("value", "to_v"), ("proj_attn", "to_out.0")):
                for suffix in ("weight", "bias"):
                    old_key = f"{name}.{old}.{suffix}"
                    if old_key in state_dict:
                        state_dict[f"{name}.{new}.{suffix}"] = state_dict.pop(old_key)
        return state_dict

    def _check_state_dict(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        expected = self.state_dict(keep_vars=True)
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        mismatched = sorted(
            f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in set(expected) & set(state_dict)
            if tuple(state_dict[k].shape) != tuple(expected[k].shape)
        )
        if missing or unexpected or mismatched:
            problems = []
            if missing:
                problems.append(f"missing keys ({len(missing)}): {_format_keys(missing)}")
            if unexpected:
                problems.append(f"unexpected keys ({len(unexpected)}): {_format_keys(unexpected)}")
            if mismatched:
                problems.append(f"shape mismatches ({len(mismatched)}): {_format_keys(mismatched)}")
            raise CheckpointError(
                f"The checkpoint {source} does not match {type(self).__name__} built from its config: "
                + "; ".join(problems)
                + ". Check that the folder/subfolder holds this model type and that config.json belongs to "
                "these weights."
            )

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def _weight_files(cls, path_or_repo_id: str | os.PathLike, subfolder: str | None, variant: str | None,
                      revision: str | None) -> list[Path]:
        single = resolve_file(path_or_repo_id, weights_file_name(WEIGHTS_NAME, variant), subfolder=subfolder,
                              revision=revision, required=False)
        if single is not None:
            return [single]
        index_path = resolve_file(path_or_repo_id, weights_file_name(WEIGHTS_INDEX_NAME, variant),
                                  subfolder=subfolder, revision=revision, required=False)
        if index_path is None:
            where = f"{path_or_repo_id}" + (f" (subfolder {subfolder!r})" if subfolder else "")
            raise FileNotFoundError(
                f"No weights for {cls.__name__} in {where}: expected "
                f"{weights_file_name(WEIGHTS_NAME, variant)!r} or {weights_file_name(WEIGHTS_INDEX_NAME, variant)!r}"
                + (f" (variant {variant!r}; pass variant=None for the default weights)" if variant else "")
                + ". Only safetensors checkpoints are supported"
                + (f"; found {pickled.name}, a pickle file, which diffblocks never unpickles (convert it to "
                   f"safetensors where you trust it, e.g. torch.load(weights_only=True) then safetensors' save_file)"
                   if (pickled := resolve_file(path_or_repo_id, weights_file_name("diffusion_pytorch_model.bin", variant),
                                               subfolder=subfolder, revision=revision, required=False)) else "")
                + "."
            )
        try:
            weight_map = json.loads(Path(index_path).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"Shard index {index_path} is not valid (need a 'weight_map' object): {exc}") from None
        files = list(dict.fromkeys(weight_map.values()))
        return [resolve_file(path_or_repo_id, name, subfolder=subfolder, revision=revision) for name in files]

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        subfolder: str | None = None,
        variant: str | None = None,
        revision: str | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | int | torch.device | None = None,
        device_map: str | int | torch.device | dict[str, Any] | None = None,
        max_memory: dict[Any, Any] | None = None,
        low_cpu_mem_usage: bool = True,
        **config_overrides: Any,
    ):
        """Load `config.json` and the safetensors weights of a local folder or a Hub repo.

        * `torch_dtype`: floating-point weights are cast to it, tensor by tensor (default: torch's default dtype,
          as in diffusers).
        * `device`: every tensor goes from the memory-mapped file straight to it (`"cuda"`, `"cuda:1"`, `"meta"`
          for a shapes-only model); no full copy of the weights is ever made on the host.
        * `device_map` (`"auto"`, `"balanced"`, `"balanced_low_0"`, `"sequential"`, a `{module: device}` dict or a
          device) with `max_memory`: split the model between devices through accelerate (see `placement`).
        * `low_cpu_mem_usage=True` (default): the model is built without weights and the checkpoint tensors
          become its parameters: on the CPU at the file's dtype they are views of the mapped file (read on first
          touch, shared with the page cache). `False`: the model is initialised normally and the weights are
          copied into it (private memory, independent of the file; slower).

        Keys must match exactly; a mismatch raises CheckpointError listing missing and unexpected keys, before
        any weight is read.
        """
        from accelerate import init_empty_weights

        placement = resolve_placement(cls.__name__, device, device_map, max_memory, low_cpu_mem_usage)
        config = cls.load_config(path_or_repo_id, subfolder=subfolder, revision=revision)
        unknown = set(config_overrides) - set(cls.init_parameter_names())
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pretrained got unknown arguments {sorted(unknown)}.")
        files = cls._weight_files(path_or_repo_id, subfolder, variant, revision)
        source = ", ".join(str(f) for f in files) if len(files) <= 2 else f"{files[0].parent} ({len(files)} shards)"
        if low_cpu_mem_usage:
            with init_empty_weights(include_buffers=False):
                model = cls.from_config(config, **config_overrides)
        else:
            model = cls.from_config(config, **config_overrides)
        dtype = torch_dtype or torch.get_default_dtype()
        # keys and shapes from the headers first: a mismatch is reported before any weight is read or converted
        shapes: dict[str, torch.Tensor] = {}
        for file in files:
            for key, (shape, file_dtype) in safetensors_shapes(file).items():
                shapes[key] = torch.empty(shape, dtype=file_dtype, device="meta")
        model._check_state_dict(model._convert_checkpoint_keys(shapes), source)
        if placement.uses_map:
            placement.plan(model, dtype)
        state_dict: dict[str, torch.Tensor] = {}
        for file in files:
            state_dict.update(load_state_dict(file, dtype=dtype, device=placement.device_of()))
        state_dict = model._convert_checkpoint_keys(state_dict)
        model.load_state_dict(state_dict, strict=True, assign=low_cpu_mem_usage)
        del state_dict
        if torch_dtype is not None:
            model.to(torch_dtype)  # buffers built at init follow the requested dtype
        placement.finish(model)
        model.eval()
        return model

    @classmethod
    def from_single_file(cls, path: str | os.PathLike, config: Any = None, torch_dtype: torch.dtype | None = None,
                         **config_overrides: Any):
        """Load from an original-layout (LDM / BFL) single `.safetensors` file; see `components.single_file`.

        `config`: a dict, a model folder, or a diffusers-format pipeline folder / repo; by default the standard
        config of the family detected from the file's keys (shipped with the package).
        """
        from .single_file import model_from_single_file

        return model_from_single_file(cls, path, config=config, torch_dtype=torch_dtype, **config_overrides)

    # -- saving -------------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        variant: str | None = None,
        max_shard_size: int | str = "10GB",
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Write `config.json` and the weights (sharded above `max_shard_size`) in the standard layout."""
        from huggingface_hub import split_torch_state_dict_into_shards
        from safetensors.torch import save_file

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_config(directory)
        state_dict = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        pattern = weights_file_name(WEIGHTS_NAME, variant).replace(".safetensors", "{suffix}.safetensors")
        split = split_torch_state_dict_into_shards(
            state_dict, filename_pattern=pattern, max_shard_size=_parse_size(max_shard_size)
        )
        # remove weights of an earlier save that this one does not overwrite (stale shards, stale single file)
        stem = weights_file_name("diffusion_pytorch_model", variant)
        shard_re = re.compile(re.escape(stem) + r"(-\d{5}-of-\d{5})?\.safetensors")
        for old in directory.iterdir():
            if old.is_file() and shard_re.fullmatch(old.name) and old.name not in split.filename_to_tensors:
                old.unlink()
        index_file = directory / weights_file_name(WEIGHTS_INDEX_NAME, variant)
        for filename, names in split.filename_to_tensors.items():
            # write beside and rename: models loaded from this folder map the old file, which must not change
            tmp = directory / f".{filename}.{os.getpid()}.{threading.get_ident()}.tmp"
            try:
                save_file({n: state_dict[n] for n in names}, str(tmp), metadata={"format": "pt"})
                os.replace(tmp, directory / filename)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        if split.is_sharded:
            index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
            index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        elif index_file.exists():
            index_file.unlink()
        logger.debug("saved %s to %s (%s)", type(self).__name__, directory, stem)
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", None) or directory.name
            upload_folder(directory, repo_id, **kwargs)

    def __repr__(self) -> str:  # nn.Module's module tree, not the config line
        return nn.Module.__repr__(self)
