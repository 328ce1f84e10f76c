"""Reading safetensors checkpoints lazily: memory-mapped, tensor by tensor, to the dtype and device asked for.

The `safetensors` library parses and validates the file (header size, dtypes, shapes, offsets that must tile the
data section exactly, file length) before any tensor is created, so a crafted or truncated file is refused
without a large allocation. Tensors are then read through its memory map:

* kept as they are on the CPU, a tensor is a *view* of the mapped file: nothing is copied, pages are read from
  the page cache on first touch and shared with it (copy-on-write if someone writes to them);
* cast (`dtype`) or moved (`device`), tensors are converted one at a time and the mapping is reopened every
  `_WINDOW_BYTES` of source data, so the source pages leave the process as the conversion goes: an fp32 file
  loaded as fp16 peaks near the fp16 copy, not at both copies.

`load_state_dict` is the one entry point for the rest of the library (models, adapters, single files).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Union

import torch

logger = logging.getLogger(__name__)

__all__ = ["CheckpointError", "load_state_dict", "safetensors_shapes"]

DeviceLike = Union[str, int, torch.device]
# Source bytes converted per mapping of the file before it is closed and reopened (releases the pages read).
_WINDOW_BYTES = 64 * 2**20


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model: corrupt file, or keys / shapes that do not match."""


def _open(path: Path):
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except SafetensorError as exc:
        size = path.stat().st_size if path.exists() else 0
        raise CheckpointError(
            f"{path} is not a valid safetensors file ({size} bytes; corrupt, truncated or crafted): {exc}. "
            "Download or save it again (pickled .bin/.ckpt/.pt checkpoints are not read: they can run code)."
        ) from None


def _as_device(device: DeviceLike | None) -> torch.device | None:
    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a torch device such as 'cpu', 'cuda', 'cuda:1' or 'meta': {exc}") from None


def _convert(tensor: torch.Tensor, dtype: torch.dtype | None, device: torch.device | None) -> torch.Tensor:
    target_dtype = dtype if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype else None
    if device is not None and device.type == "meta":
        return torch.empty(tensor.shape, dtype=target_dtype or tensor.dtype, device="meta")
    if device is None or device.type == "cpu":
        return tensor if target_dtype is None else tensor.to(target_dtype)
    # cast on the target device (half the host memory traffic is not worth a host-side copy of the tensor)
    return tensor.to(device).to(target_dtype) if target_dtype is not None else tensor.to(device)


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """`{name: (shape, dtype)}` of a safetensors file, read from its (validated) header only."""
    from safetensors.torch import _getdtype

    path = Path(path)
    with _open(path) as f:
        out = {}
        for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            info = f.get_slice(key)
            out[key] = (tuple(info.get_shape()), _getdtype(info.get_dtype()))
        return out


def iter_safetensors(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: DeviceLike | Callable[[str], DeviceLike | None] | None = None,
    keys: list[str] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(name, tensor)` of a safetensors file in file order, converted as `load_state_dict` describes.

    `device` may be a function of the tensor name (a device map). Only floating-point tensors are cast.
    """
    path = Path(path)
    device_of = device if callable(device) else (lambda _key, d=_as_device(device): d)
    handle = _open(path)
    try:
        wanted = list(handle.keys()) if keys is None else list(keys)
        missing = sorted(set(wanted) - set(handle.keys()))
        if missing:
            raise CheckpointError(f"{path} has no tensor(s) {missing[:10]}.")
        read_since_open = 0
        for key in wanted:
            target = device_of(key)
            target = _as_device(target) if not isinstance(target, torch.device) else target
            tensor = handle.get_tensor(key)  # a view of the map: nothing read yet
            converted = _convert(tensor, dtype, target)
            if converted is not tensor and converted.device.type != "meta":
                read_since_open += tensor.numel() * tensor.element_size()
            del tensor
            yield key, converted
            if read_since_open >= _WINDOW_BYTES:
                # every view of this mapping has been converted away: close it so its pages leave the process
                handle.__exit__(None, None, None)
                handle = _open(path)
                read_since_open = 0
    finally:
        handle.__exit__(None, None, None)


def load_state_dict(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    dtype: torch.dtype | None = None,
    device: DeviceLike | Callable[[str], DeviceLike | None] | None = None,
) -> dict[str, torch.Tensor]:
    """A state dict from a `.safetensors` file (memory-mapped) or a mapping of tensors, at `dtype` / `device`.

    * `dtype`: floating-point tensors are cast to it (integer and bool tensors are kept); None keeps the file's.
    * `device`: where tensors go (`"cuda:0"`, `"meta"` for shapes only, ...), or a function of the tensor name.
      None or `"cpu"` with no cast returns views of the mapped file (nothing copied, read on first touch).
    * Conversion is tensor by tensor, so there is never a full intermediate copy on the host.

    A corrupt, truncated or crafted file raises CheckpointError naming it, before any tensor is allocated.
    Files that are not safetensors are refused (pickled checkpoints can run code when loaded).
    """
    if isinstance(source, Mapping):
        device_of = device if callable(device) else (lambda _key, d=_as_device(device): d)
        out = {}
        for key, tensor in source.items():
            if not isinstance(tensor, torch.Tensor):
                raise CheckpointError(f"state dict entry {key!r} is a {type(tensor).__name__}, not a tensor.")
            target = device_of(key)
            out[key] = _convert(tensor, dtype, _as_device(target) if not isinstance(target, torch.device) else target)
        return out
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist.")
    return dict(iter_safetensors(path, dtype=dtype, device=device))
