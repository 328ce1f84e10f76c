"""Memory accounting and automatic CPU offload for the components a `ComponentsManager` holds.

Memory accounting (used by the manager's table and by the offloader): a model's size is the bytes of
its parameters and buffers; its residency is how many of those bytes sit on each device.
`AutoOffloader` moves models to the execution device on demand and evicts least recently used ones
when they do not fit; the manager owns one while `enable_auto_cpu_offload` is on.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "AutoOffloader",
    "OffloadCandidate",
    "format_size",
    "lru_size_aware_policy",
    "module_memory_bytes",
    "module_residency",
    "parse_size",
    "torch_memory_info",
]

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(size: int | float | str) -> int:
    """Bytes from an int or a string such as "3GB" (10**9) or "3GiB" (2**30), as accelerate reads them."""
    if isinstance(size, bool):
        raise TypeError(f"expected a size such as 3_000_000_000 or '3GB', got {size!r}")
    if isinstance(size, (int, float)):
        if size < 0:
            raise ValueError(f"a memory size cannot be negative, got {size!r}")
        return int(size)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(size))
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"cannot read memory size {size!r}: expected a number of bytes or a number with one of the units "
            "B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. '3GB'"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(num_bytes: int) -> str:
    """Human-readable bytes (powers of 1024), e.g. '5.14 GiB', '12.0 KiB'."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"  # unreachable, keeps type checkers quiet


def _tensors(module: torch.nn.Module):
    # parameters() and buffers() already skip repeats of the same tensor object (tied weights)
    yield from module.parameters()
    yield from module.buffers()


def module_memory_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers, wherever they are."""
    return sum(t.numel() * t.element_size() for t in _tensors(module))


def module_residency(module: torch.nn.Module) -> dict[str, int]:
    """Bytes of parameters and buffers per device, e.g. {"cuda:0": 5_100_000_000, "cpu": 40_000}."""
    residency: dict[str, int] = {}
    for t in _tensors(module):
        key = str(t.device)
        residency[key] = residency.get(key, 0) + t.numel() * t.element_size()
    return residency


# ---------------------------------------------------------------------------------------------------
# automatic CPU offload
# ---------------------------------------------------------------------------------------------------

MemoryInfo = Callable[[torch.device], tuple[int, int]]
"""(free_bytes, total_bytes) of a device."""


def torch_memory_info(device: torch.device) -> tuple[int, int]:
    """Free and total bytes of an accelerator, counting memory torch has cached but not used as free.

    torch keeps freed blocks in its caching allocator; the driver reports them as used, but an
    incoming model can reuse them, so they count as free here (no `empty_cache` needed after evicting).
    """
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"auto CPU offload to {device} needs CUDA, but torch.cuda.is_available() is False; "
                "pass the device you have, or max_memory=/memory_info= to run the policy without one"
            )
        free, total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached, total
    if device.type != "cpu" and hasattr(torch, "accelerator"):
        try:
            return torch.accelerator.get_memory_info(device)
        except (RuntimeError, NotImplementedError, TypeError) as err:
            raise RuntimeError(f"cannot read free memory of {device}: {err}") from err
    raise RuntimeError(
        f"cannot read free memory of device {str(device)!r}: torch has no memory query for it. Pass "
        "max_memory='8GB' (a budget for the models placed there) or memory_info=callable(device) -> (free, total)"
    )


@dataclass
class OffloadCandidate:
    """A model resident on the execution device that could be moved back to the CPU."""

    component_id: str
    module: torch.nn.Module
    size_bytes: int  # bytes it occupies on the execution device (what evicting it frees)
    last_used: int  # logical clock of its last call; smaller means longer ago


EvictionPolicy = Callable[[list[OffloadCandidate], int], Sequence[OffloadCandidate]]
"""policy(candidates sorted least recently used first, bytes that must be freed) -> models to evict."""


def lru_size_aware_policy(candidates: list[OffloadCandidate], need_bytes: int) -> list[OffloadCandidate]:
    """Evict least recently used models until `need_bytes` are freed, then keep back any that were not needed.

    Why this rule: in a diffusion workflow the denoiser runs every step while text encoders run once at
    the start and the VAE once at the end, so recency predicts the next use well; evicting by recency
    keeps the denoiser resident while encoders come and go. The second pass is the size-aware part: an
    evicted model whose bytes turned out to be unnecessary (because a larger, later one covered the need)
    is kept, most recently used first, so a small encoder is not thrown out for nothing.
    O(n log n), unlike an exhaustive search over combinations. If even all candidates do not free
    enough, all are returned.
    """
    order = sorted(candidates, key=lambda c: c.last_used)
    chosen: list[OffloadCandidate] = []
    freed = 0
    for cand in order:
        if freed >= need_bytes:
            break
        chosen.append(cand)
        freed += cand.size_bytes
    if freed < need_bytes:
        return chosen
    for cand in sorted(chosen, key=lambda c: -c.last_used):
        if freed - cand.size_bytes >= need_bytes:
            chosen.remove(cand)
            freed -= cand.size_bytes
    return chosen


def _to_device(obj: Any, device: torch.device) -> Any:
    """Tensors inside args/kwargs (nested lists, tuples, dicts) moved to `device`; everything else as is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        moved = {k: _to_device(v, device) for k, v in obj.items()}
        if type(obj) is not dict:
            try:
                return type(obj)(moved)
            except TypeError:
                pass
        return moved
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _own_tensor_bytes(module: torch.nn.Module) -> int:
    tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
    return sum(t.numel() * t.element_size() for t in tensors)


def _move_own_tensors(module: torch.nn.Module, device: torch.device) -> None:
    """Move only this module's own parameters and buffers (not its children's)."""
    for param in module.parameters(recurse=False):
        if param.device != device:
            param.data = param.data.to(device)
    for name, buf in module._buffers.items():
        if buf is not None and buf.device != device:
            module._buffers[name] = buf.to(device)


def _move_module(module: torch.nn.Module, device: torch.device, skip: set[int]) -> None:
    if not skip:
        module.to(device)
        return
    for sub in module.modules():
        if id(sub) not in skip:
            _move_own_tensors(sub, device)


class _Entry:
    """Offload state of one model (possibly registered under several component ids)."""

    def __init__(self, component_id: str, module: torch.nn.Module):
        self.ids = [component_id]
        self.module = module
        self.on_device = False
        self.last_used = -1
        self.active = 0  # nesting depth of wrapped calls currently running
        self.wrapped: dict[str, Any] = {}  # method name -> instance attribute it shadowed (or _MISSING)
        self.streamed: dict[int, torch.nn.Module] = {}  # submodules kept on CPU and streamed per call
        self.stream_handles: list[Any] = []

    @property
    def cid(self) -> str:
        return self.ids[0]

    @property
    def size(self) -> int:
        # read live: a model's dtype can change after it was attached
        return module_memory_bytes(self.module)

    @property
    def streamed_bytes(self) -> int:
        return sum(_own_tensor_bytes(m) for m in self.streamed.values())

    @property
    def device_bytes(self) -> int:
        """Bytes this model occupies on the execution device while resident."""
        return self.size - self.streamed_bytes


_MISSING = object()


class AutoOffloader:
    """Moves managed models to the execution device just before they run, evicting others to fit.

    Each model's `forward` and its whole-method entry points (`encode`, `decode` by default) are
    wrapped: the wrapper makes the model resident (evicting least recently used models chosen by the
    policy when `free - margin` cannot hold it), moves tensor inputs to the device and calls through;
    outputs are returned unchanged. Models stay resident after the call until something needs the
    room. On an out-of-memory error the call is retried once with every other model evicted; a VAE
    `decode` that still does not fit is retried with tiling.

    `memory_info(device) -> (free, total)` replaces the torch query; `max_memory` caps the bytes of
    models placed on the device (a budget, e.g. to share a GPU or to exercise the policy on CPU).
    `partial={"unet": "2GB"}` keeps at most that many bytes of the named component resident and
    streams its largest submodules from the CPU on every call (for models larger than the budget).
    """

    def __init__(
        self,
        device: str | int | torch.device | None = "cuda",
        memory_reserve_margin: int | str = "3GB",
        policy: EvictionPolicy | None = None,
        memory_info: MemoryInfo | None = None,
        max_memory: int | str | None = None,
        offload_device: str | torch.device = "cpu",
        methods: Sequence[str] = ("forward", "encode", "decode"),
        partial: dict[str, int | str] | None = None,
        max_events: int = 10_000,
    ):
        self.device = _normalize_device(device)
        self.offload_device = torch.device(offload_device)
        self.margin = parse_size(memory_reserve_margin)
        self.max_memory = None if max_memory is None else parse_size(max_memory)
        self.policy: EvictionPolicy = policy or lru_size_aware_policy
        self.methods = tuple(methods)
        self.partial = {k: parse_size(v) for k, v in (partial or {}).items()}
        if memory_info is None and self.max_memory is None:
            memory_info = torch_memory_info
            memory_info(self.device)  # fail now, not on the first forward
        self.memory_info = memory_info
        self.events: deque[tuple[str, str]] = deque(maxlen=max_events)
        self._entries: dict[int, _Entry] = {}  # id(module) -> entry
        self._by_cid: dict[str, _Entry] = {}
        self._clock = itertools.count()

    # ----------------------------------------------------------------- registry
    def attach(self, component_id: str, module: torch.nn.Module, name: str | None = None) -> None:
        """Start managing `module`: it goes to the offload device and its entry points are wrapped."""
        entry = self._entries.get(id(module))
        if entry is not None:  # the same model under another id
            entry.ids.append(component_id)
            self._by_cid[component_id] = entry
            return
        entry = _Entry(component_id, module)
        self._entries[id(module)] = entry
        self._by_cid[component_id] = entry
        budget = self.partial.get(component_id, self.partial.get(name or "", None))
        if budget is not None:
            self._select_streamed(entry, budget)
        _move_module(module, self.offload_device, set())
        for method in self.methods:
            if callable(getattr(module, method, None)):
                self._wrap(entry, method)

    def detach(self, component_id: str) -> None:
        """Stop managing a component id; the model is unwrapped once no id refers to it."""
        entry = self._by_cid.pop(component_id, None)
        if entry is None:
            return
        entry.ids.remove(component_id)
        if entry.ids:
            return
        del self._entries[id(entry.module)]
        for method, previous in entry.wrapped.items():
            if previous is _MISSING:
                entry.module.__dict__.pop(method, None)
            else:
                entry.module.__dict__[method] = previous
        for handle in entry.stream_handles:
            handle.remove()
        _move_module(entry.module, self.offload_device, set())
        entry.on_device = False

    def close(self) -> None:
        """Detach everything: all managed models end on the offload device, unwrapped."""
        for cid in list(self._by_cid):
            self.detach(cid)
        _empty_cache(self.device)

    def is_attached(self, component_id: str) -> bool:
        return component_id in self._by_cid

    def is_resident(self, component_id: str) -> bool:
        """Whether the component is on the execution device (by this offloader's bookkeeping)."""
        return self._by_cid[component_id].on_device

    def resident_ids(self) -> list[str]:
        """Components on the execution device, least recently used first."""
        entries = sorted((e for e in self._entries.values() if e.on_device), key=lambda e: e.last_used)
        return [e.cid for e in entries]

    def resident_bytes(self) -> int:
        return sum(e.device_bytes for e in self._entries.values() if e.on_device)

    def describe(self) -> str:
        text = f"{self.device}, margin {format_size(self.margin)}"
        if self.max_memory is not None:
            text += f", budget {format_size(self.max_memory)}"
        return text + f", {format_size(self.resident_bytes())} of models resident"

    # ----------------------------------------------------------------- partial offload
    def set_partial(self, component_id: str, max_resident: int | str | None) -> None:
        """Keep at most `max_resident` bytes of this model on the device, streaming the rest (None: off)."""
        entry = self._by_cid[component_id]
        was_on = entry.on_device
        if was_on:
            self._evict(entry)
        for handle in entry.stream_handles:
            handle.remove()
        entry.stream_handles, entry.streamed = [], {}
        if max_resident is not None:
            self._select_streamed(entry, parse_size(max_resident))

    def _select_streamed(self, entry: _Entry, max_resident: int) -> None:
        """Pick submodules to stream, largest own weights first, until the rest fits in `max_resident`."""
        subs = [m for m in entry.module.modules() if m is not entry.module and _own_tensor_bytes(m) > 0]
        subs.sort(key=_own_tensor_bytes, reverse=True)
        resident = entry.size
        for sub in subs:
            if resident <= max_resident:
                break
            entry.streamed[id(sub)] = sub
            resident -= _own_tensor_bytes(sub)
        if resident > max_resident:
            logger.warning(
                "auto offload: '%s' keeps %s resident even with every submodule streamed (asked for at most %s); "
                "its own top-level weights cannot be streamed",
                entry.cid,
                format_size(resident),
                format_size(max_resident),
            )
        for sub in entry.streamed.values():
            entry.stream_handles.append(sub.register_forward_pre_hook(self._stream_in))
            entry.stream_handles.append(sub.register_forward_hook(self._stream_out))

    def _stream_in(self, module: torch.nn.Module, args: Any) -> None:
        _move_own_tensors(module, self.device)

    def _stream_out(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        _move_own_tensors(module, self.offload_device)

    # ----------------------------------------------------------------- placement
    def prepare(self, component_id: str) -> None:
        """Make a component resident now (for code that reads its weights without calling it)."""
        entry = self._by_cid[component_id]
        self._make_resident(entry)

    def _available(self) -> int:
        free: int | None = None
        if self.memory_info is not None:
            free = int(self.memory_info(self.device)[0])
        if self.max_memory is not None:
            budget_free = self.max_memory - self.resident_bytes()
            free = budget_free if free is None else min(free, budget_free)
        assert free is not None
        return free - self.margin

    def _make_resident(self, entry: _Entry) -> None:
        entry.last_used = next(self._clock)
        if entry.on_device:
            return
        need = entry.device_bytes - self._available()
        if need > 0:
            candidates = [
                OffloadCandidate(e.cid, e.module, e.device_bytes, e.last_used)
                for e in self._entries.values()
                if e.on_device and e is not entry and e.active == 0
            ]
            candidates.sort(key=lambda c: c.last_used)
            chosen = list(self.policy(candidates, need)) if candidates else []
            known = {c.component_id for c in candidates}
            for cand in chosen:
                if cand.component_id not in known:
                    raise ValueError(
                        f"offload policy {self.policy!r} returned {cand.component_id!r}, which was not among "
                        f"the candidates {sorted(known)}"
                    )
                self._evict(self._by_cid[cand.component_id])
            if sum(c.size_bytes for c in chosen) < need:
                logger.warning(
                    "auto offload: '%s' (%s) does not fit on %s within the margin even after evicting %s; "
                    "loading it anyway (consider partial={'<name>': '<bytes>'} for this component)",
                    entry.cid,
                    format_size(entry.device_bytes),
                    self.device,
                    [c.component_id for c in chosen] or "nothing",
                )
        _move_module(entry.module, self.device, set(entry.streamed))
        entry.on_device = True
        self.events.append(("load", entry.cid))
        logger.info("auto offload: moved '%s' to %s", entry.cid, self.device)

    def _evict(self, entry: _Entry) -> None:
        _move_module(entry.module, self.offload_device, set(entry.streamed))
        entry.on_device = False
        self.events.append(("evict", entry.cid))
        logger.info("auto offload: moved '%s' to %s", entry.cid, self.offload_device)

    def _evict_all_except(self, keep: _Entry) -> list[str]:
        evicted = [e for e in self._entries.values() if e.on_device and e is not keep and e.active == 0]
        for e in evicted:
            self._evict(e)
        _empty_cache(self.device)
        return [e.cid for e in evicted]

    # ----------------------------------------------------------------- hooks
    def _wrap(self, entry: _Entry, method: str) -> None:
        module = entry.module
        original = getattr(module, method)
        entry.wrapped[method] = module.__dict__.get(method, _MISSING)

        @functools.wraps(original)
        def call(*args: Any, **kwargs: Any) -> Any:
            entry.active += 1
            try:
                if entry.active > 1:  # nested call (e.g. forward -> decode): the outer call handles errors
                    self._make_resident(entry)
                    return original(*_to_device(args, self.device), **_to_device(kwargs, self.device))
                return self._call_with_retry(entry, method, original, args, kwargs)
            finally:
                entry.active -= 1

        module.__dict__[method] = call

    def _call_with_retry(self, entry: _Entry, method: str, fn: Callable, args: tuple, kwargs: dict) -> Any:
        def attempt() -> Any:
            # placing the model is inside the retry too: moving its weights can itself run out of memory
            self._make_resident(entry)
            return fn(*_to_device(args, self.device), **_to_device(kwargs, self.device))

        try:
            return attempt()
        except torch.OutOfMemoryError:
            pass  # handled below, once the failed attempt's frames (and activations) are released
        evicted = self._evict_all_except(entry)
        self.events.append(("oom_retry", entry.cid))
        logger.warning(
            "auto offload: '%s'.%s ran out of memory on %s; retrying once with %s evicted",
            entry.cid, method, self.device, evicted or "nothing else",
        )
        try:
            return attempt()
        except torch.OutOfMemoryError as retry_err:
            # drop the traceback: its frames hold the failed attempt's activations
            last_err: torch.OutOfMemoryError = retry_err.with_traceback(None)
        module = entry.module
        if method == "decode" and callable(getattr(module, "enable_tiling", None)) and not getattr(
            module, "use_tiling", False
        ):
            _empty_cache(self.device)
            self.events.append(("tiling", entry.cid))
            logger.warning("auto offload: '%s'.decode still out of memory; retrying with tiled decoding", entry.cid)
            module.enable_tiling()
            try:
                return attempt()
            except torch.OutOfMemoryError as tiled_err:
                last_err = tiled_err.with_traceback(None)
            finally:
                module.disable_tiling()
        raise torch.OutOfMemoryError(
            f"'{entry.cid}' ({type(module).__name__}, {format_size(entry.device_bytes)} on {self.device}).{method} "
            f"ran out of device memory even with every other managed model moved to {self.offload_device}. "
            "Lower the batch size or resolution, run it in lower precision, or stream part of it with "
            f"manager.auto_offload.set_partial('{entry.cid}', '<bytes>'). Original error: {last_err}"
        ) from last_err


def _normalize_device(device: str | int | torch.device | None) -> torch.device:
    if device is None:  # the reference's default: whatever accelerator torch sees
        current = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
        if current is None:
            raise RuntimeError(
                "auto CPU offload: no accelerator found for device=None; pass device='cuda' (or another device) "
                "and, without one, max_memory= or memory_info= to run the policy on a simulated device"
            )
        device = current
    if isinstance(device, int):
        device = torch.device("cuda", device)
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        device = torch.device("cuda", index)
    return device


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
