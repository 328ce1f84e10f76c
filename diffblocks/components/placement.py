"""Where a model's weights go when it loads: one device, or a device map computed and applied by accelerate.

`from_pretrained(device=...)` puts every tensor on one device as it is read from the mapped file.
`from_pretrained(device_map=...)` splits the model between devices for models that do not fit one:

* `"auto"` / `"balanced"` / `"balanced_low_0"` / `"sequential"`: accelerate's `get_balanced_memory` (or
  `get_max_memory`) and `infer_auto_device_map` choose, honouring `max_memory` (`{0: "10GiB", "cpu": "30GiB"}`)
  and the model's `_no_split_modules` (blocks that must stay on one device);
* a dict `{module_name: device}` (`""` is the whole model), a device string, an index or a `torch.device`.

Each tensor is read straight to the device its module is mapped to; then accelerate's `dispatch_model` adds the
hooks that move activations between devices (modules mapped to `"cpu"` next to accelerators are offloaded: kept
on the host and brought to the accelerator for their forward). Offloading to `"disk"` is not supported: the
weights are already in a file, raise `max_memory` or map the rest to `"cpu"`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import nn

__all__ = ["AUTO_DEVICE_MAPS", "Placement", "resolve_placement"]

AUTO_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
MapDevice = Union[int, str]


def _check_available(device: torch.device, what: str, owner: str) -> None:
    if device.type in ("cpu", "meta"):
        return
    backend = getattr(torch, device.type, None)
    available = backend is not None and getattr(backend, "is_available", lambda: False)()
    if not available:
        raise ValueError(
            f"{owner}: {what} {str(device)!r} is not available on this machine (torch.{device.type}.is_available() "
            f"is False). Use 'cpu', or install a torch build for {device.type}."
        )
    count = getattr(backend, "device_count", lambda: 1)()
    if device.index is not None and device.index >= count:
        raise ValueError(f"{owner}: {what} {str(device)!r} does not exist: this machine has {count} {device.type} device(s).")


def _parse_device(value: Any, what: str, owner: str) -> torch.device:
    if isinstance(value, bool):
        raise ValueError(f"{owner}: {what} {value!r} is not a device.")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{owner}: {what} {value} is negative; pass 'cpu' for the host or an accelerator index >= 0.")
        value = torch.device("cuda", value)  # accelerate's convention: an int is a CUDA device index
    try:
        device = value if isinstance(value, torch.device) else torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"{owner}: {what} {value!r} is not a device such as 'cpu', 'cuda', 'cuda:1', 0 or 'meta' ({exc})."
        ) from None
    _check_available(device, what, owner)
    return device


def _map_value(device: torch.device) -> MapDevice:
    """accelerate's spelling: 'cpu', 'meta', an int for an indexed accelerator, else the device string."""
    if device.type in ("cpu", "meta"):
        return device.type
    if device.type == "cuda":
        return device.index if device.index is not None else torch.cuda.current_device()
    return str(device)


@dataclass
class Placement:
    """The validated target of a load: one device (or none: the host), or a device map to compute/apply."""

    device: torch.device | None = None
    device_map: dict[str, MapDevice] | str | None = None
    max_memory: dict[Any, Any] | None = None

    @property
    def uses_map(self) -> bool:
        return self.device_map is not None

    def plan(self, model: nn.Module, dtype: torch.dtype | None) -> None:
        """Turn an `"auto"`-style map into `{module: device}` for this (meta-device) model; check dict maps."""
        from accelerate.utils import get_balanced_memory, get_max_memory, infer_auto_device_map

        owner = type(model).__name__
        if isinstance(self.device_map, str):
            no_split = getattr(model, "_no_split_modules", None)
            if no_split is None:
                raise ValueError(
                    f"{owner} does not support device_map={self.device_map!r} (it declares no _no_split_modules); "
                    "pass a dict device_map or device=..."
                )
            if self.device_map == "sequential":
                max_memory = get_max_memory(self.max_memory)
            else:
                max_memory = get_balanced_memory(
                    model, max_memory=self.max_memory, no_split_module_classes=list(no_split), dtype=dtype,
                    low_zero=self.device_map == "balanced_low_0",
                )
            planned = infer_auto_device_map(
                model, max_memory=max_memory, no_split_module_classes=list(no_split), dtype=dtype
            )
            if "disk" in planned.values():
                on_disk = [name for name, d in planned.items() if d == "disk"]
                raise ValueError(
                    f"{owner} does not fit in max_memory={max_memory}: device_map={self.device_map!r} would offload "
                    f"{len(on_disk)} module(s) to disk ({', '.join(on_disk[:5])}), which diffblocks does not do. "
                    "Raise max_memory (including 'cpu') or use a smaller torch_dtype."
                )
            self.device_map = {name: _map_value(_parse_device(d, "device_map value", owner)) for name, d in planned.items()}
            return
        modules = dict(model.named_modules())
        unknown = [name for name in self.device_map if name != "" and name not in modules]
        if unknown:
            raise ValueError(
                f"{owner}: device_map names module(s) the model does not have: {unknown[:5]}. Keys are module "
                f"names such as {[n for n in list(modules)[1:4]]} ('' is the whole model)."
            )
        resolver = _PrefixResolver(self.device_map)
        uncovered = [key for key in model.state_dict(keep_vars=True) if resolver(key) is None]
        if uncovered:
            raise ValueError(
                f"{owner}: device_map gives no device for {len(uncovered)} tensor(s), e.g. {uncovered[:5]}. "
                "Map their modules, or add '' for the rest."
            )

    def device_of(self) -> Callable[[str], torch.device | MapDevice | None] | torch.device | None:
        if not self.uses_map:
            return self.device
        resolver = _PrefixResolver(self.device_map)
        return lambda key: _as_torch_device(resolver(key))

    def finish(self, model: nn.Module) -> None:
        """Move what loading did not place (buffers built at init) and attach accelerate's hooks for a map."""
        if not self.uses_map:
            if self.device is not None:
                model.to(self.device)
            return
        from accelerate import dispatch_model

        devices = set(self.device_map.values())
        if len(devices) == 1:
            model.to(_as_torch_device(next(iter(devices))))
            model.hf_device_map = dict(self.device_map)
            return
        # buffers built at init (not in the checkpoint) follow their module's device
        resolver = _PrefixResolver(self.device_map)
        for module_name, module in model.named_modules():
            for name, buffer in list(module.named_buffers(recurse=False)):
                key = f"{module_name}.{name}" if module_name else name
                target = _as_torch_device(resolver(key))
                if buffer is not None and buffer.device != target and target.type != "cpu":
                    module._buffers[name] = buffer.to(target)
        dispatch_model(model, device_map=dict(self.device_map))


def _as_torch_device(value: MapDevice | None) -> torch.device | None:
    if value is None:
        return None
    if isinstance(value, int):
        return torch.device("cuda", value)
    return torch.device(value)


class _PrefixResolver:
    """Device of a tensor name: the entry of the longest module name that prefixes it."""

    def __init__(self, device_map: dict[str, MapDevice]):
        self._entries = sorted(device_map.items(), key=lambda kv: -len(kv[0]))

    def __call__(self, key: str) -> MapDevice | None:
        for name, device in self._entries:
            if name == "" or key == name or key.startswith(name + "."):
                return device
        return None


def resolve_placement(
    owner: str,
    device: Any = None,
    device_map: Any = None,
    max_memory: dict[Any, Any] | None = None,
    low_cpu_mem_usage: bool = True,
) -> Placement:
    """Validate `device` / `device_map` / `max_memory` / `low_cpu_mem_usage` before anything is read."""
    if device is not None and device_map is not None:
        raise ValueError(f"{owner}.from_pretrained: pass device={device!r} or device_map={device_map!r}, not both.")
    if max_memory is not None and not (isinstance(device_map, str) and device_map in AUTO_DEVICE_MAPS):
        raise ValueError(
            f"{owner}.from_pretrained: max_memory only applies to device_map in {list(AUTO_DEVICE_MAPS)}; got "
            f"device_map={device_map!r}."
        )
    if max_memory is not None and not isinstance(max_memory, dict):
        raise ValueError(f"{owner}.from_pretrained: max_memory must be a dict such as {{0: '10GiB', 'cpu': '30GiB'}}.")
    if device_map is not None and not low_cpu_mem_usage:
        raise ValueError(
            f"{owner}.from_pretrained: device_map={device_map!r} needs low_cpu_mem_usage=True (the model is built "
            "without weights and each tensor goes straight to its device)."
        )
    if device is not None:
        target = _parse_device(device, "device", owner)
        if target.type == "meta" and not low_cpu_mem_usage:
            raise ValueError(f"{owner}.from_pretrained: device='meta' needs low_cpu_mem_usage=True.")
        return Placement(device=target)
    if device_map is None:
        return Placement()
    if isinstance(device_map, str) and device_map in AUTO_DEVICE_MAPS:
        return Placement(device_map=device_map, max_memory=max_memory)
    if isinstance(device_map, (str, int, torch.device)):
        try:
            return Placement(device_map={"": _map_value(_parse_device(device_map, "device_map", owner))})
        except ValueError as exc:
            if isinstance(device_map, str) and "is not a device" in str(exc):
                raise ValueError(
                    f"{owner}.from_pretrained: device_map={device_map!r} is neither a device ('cpu', 'cuda:0', ...) "
                    f"nor one of {list(AUTO_DEVICE_MAPS)}."
                ) from None
            raise
    if isinstance(device_map, dict):
        resolved = {}
        for name, value in device_map.items():
            if not isinstance(name, str):
                raise ValueError(f"{owner}.from_pretrained: device_map keys are module names (str), got {name!r}.")
            if value == "disk":
                raise ValueError(
                    f"{owner}.from_pretrained: device_map[{name!r}] = 'disk': disk offload is not supported; map it "
                    "to 'cpu' (offloaded to the host, run on the accelerator) instead."
                )
            resolved[name] = _map_value(_parse_device(value, f"device_map[{name!r}]", owner))
        return Placement(device_map=resolved)
    raise ValueError(
        f"{owner}.from_pretrained: device_map must be a dict, a device or one of {list(AUTO_DEVICE_MAPS)}; got "
        f"{type(device_map).__name__}."
    )
