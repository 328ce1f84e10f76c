"""Reading adapter weight files (LoRA, textual inversion, IP-Adapter) from a file, a folder or a Hub repo.

`.safetensors` files are read with their metadata; `.bin` / `.pt` files only through
`torch.load(weights_only=True)`, so no pickled code ever runs. Names given by the caller (`weight_name`,
`subfolder`) must stay inside the folder or repo.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ..hub import is_local, list_files, resolve_file

logger = logging.getLogger(__name__)

__all__ = ["AdapterFileError", "load_adapter_file", "read_weights"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


class AdapterFileError(ValueError):
    """An adapter file or state dict that cannot be used: unknown layout, bad shapes, wrong model family."""


def _check_relative(name: str, what: str) -> None:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if PurePosixPath(name).is_absolute() or ".." in parts:
        raise AdapterFileError(f"{what} {name!r} must be a path inside the folder or repo (no '..', not absolute).")


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors metadata) of one weights file; pickle files load with `weights_only=True`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        from ..state_dict import load_state_dict

        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return load_state_dict(path), metadata
    if path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses pickled code: say so instead of a bare unpickling error
            raise AdapterFileError(f"{path}: could not be read as plain tensors with torch.load(weights_only=True) "
                                   f"({type(exc).__name__}: {exc}). Convert it to .safetensors.") from exc
        if not isinstance(data, dict):
            raise AdapterFileError(f"{path}: expected a dict of tensors, got {type(data).__name__}.")
        return data, {}
    raise AdapterFileError(f"{path}: unsupported weights file type {path.suffix!r}; expected one of {_WEIGHT_SUFFIXES}.")


def load_adapter_file(
    path_repo_or_dict: str | os.PathLike | dict[str, Any],
    weight_name: str | None = None,
    subfolder: str | None = None,
    default_names: tuple[str, ...] = (),
    revision: str | None = None,
) -> tuple[dict[str, Any], dict[str, str], str]:
    """(state dict, metadata, source description) from a dict, a weights file, or a folder / Hub repo.

    For a folder or repo, `weight_name` picks the file; without it the first of `default_names` present is
    used, else the only weights file there (several candidates is an error listing them).
    """
    if isinstance(path_repo_or_dict, dict):
        return dict(path_repo_or_dict), {}, "the given state dict"
    source = str(path_repo_or_dict)
    if Path(source).expanduser().is_file():
        tensors, metadata = read_weights(Path(source).expanduser())
        return tensors, metadata, source
    if subfolder:
        _check_relative(subfolder, "subfolder")
    if weight_name is None:
        for name in default_names:
            if resolve_file(source, name, subfolder, revision=revision, required=False) is not None:
                weight_name = name
                break
    if weight_name is None:
        candidates = [f for f in list_files(source, subfolder, revision=revision) if f.endswith(_WEIGHT_SUFFIXES)
                      and "/" not in f]
        if len(candidates) != 1:
            where = f"{source!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
            raise AdapterFileError(
                f"{where}: pass weight_name=...; " + (f"candidates: {candidates}" if candidates else
                                                     "no weights file (.safetensors/.bin) found there")
                + ("" if is_local(source) or candidates else " (or the repo could not be listed)"))
        weight_name = candidates[0]
    _check_relative(weight_name, "weight_name")
    path = resolve_file(source, weight_name, subfolder, revision=revision)
    tensors, metadata = read_weights(path)
    return tensors, metadata, str(path)


def adapter_metadata(metadata: dict[str, str], key: str = "lora_adapter_metadata") -> dict[str, Any] | None:
    """The JSON metadata the reference's `save_lora_weights` stores in a LoRA file's header, if any."""
    raw = metadata.get(key)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AdapterFileError(f"LoRA file metadata {key!r} is not valid JSON ({exc}).") from None
    return value if isinstance(value, dict) else None
