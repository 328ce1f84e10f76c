"""Block output cache across pipeline calls: a block whose inputs, components and config are unchanged is not re-run.

Enabled per pipeline (`pipe.enable_block_cache(max_memory="2GB")`); the executor (runtime/execution.py) asks
`BlockCache.applies_to(block)` for every block it runs and `BlockCache.run(...)` for those that apply.

What applies: leaf blocks and loop blocks (composites are walked into) that do not consume randomness (declare no
`generator` input), hold no stateful scheduler (set_timesteps mutates it), and do not set `cacheable = False`.
A key that cannot be computed (an input of a type without a fingerprint, a callable, a torch.Generator) means the
block runs uncached that time.

The key of one run:
* every declared input the block reads (its value, or the block's default when absent), and every kwargs group
  it reads: tensors by a blake2b digest of their bytes (exact: no false hits; about 1 GB/s on one CPU core, so
  a 1024x1024 RGB image tensor costs ~10 ms, text-encoder inputs are strings and cost nothing), memoised per
  tensor object and version counter so an unchanged tensor is hashed once; numpy arrays and PIL images by their
  bytes, shape and mode; lists, tuples, dicts recursively; numbers, strings, dtypes, devices by value;
* each component the block declares: models by identity plus a version: the adapter version the adapter code
  keeps (`_diffblocks_adapter_version`), every parameter's storage pointer and in-place version counter (a
  weight load, `fuse_lora` or any in-place edit changes it) and the peft LoRA layers' scales, active and merged
  adapters and disabled flag; config objects (guiders, image processors) by class and config values, so a
  changed guider config invalidates; tokenizers by identity and vocabulary size;
* the block's class and its config values (`expected_configs` read from the pipeline).

Cached outputs are not copied: each tensor's version counter is recorded when it is stored and checked on every
hit, so a tensor changed in place after it was cached (by a later block or by the caller; views share the
counter) invalidates the entry instead of being handed out. numpy arrays and PIL images are copied on a hit,
containers rebuilt. LRU eviction keeps the bytes of cached tensors (distinct storages) within `max_memory`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["BlockCache", "BlockCacheInfo"]


class _Uncacheable(Exception):
    """This run of a block cannot be keyed (the reason is the message)."""


@dataclass(frozen=True)
class BlockCacheInfo:
    hits: int
    misses: int
    uncached: int
    bytes: int
    max_memory: int
    entries: int

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


@dataclass
class _Entry:
    block: str
    outputs: list[tuple[str, Any, str | None]]  # (name, value, kwargs_type)
    tensors: list[tuple[Any, int]]  # every tensor in the outputs with its version at store time
    keep_alive: tuple[Any, ...]  # components whose id() is in the key
    nbytes: int

    def intact(self) -> bool:
        return all(t._version == v for t, v in self.tensors)


def walk_tensors(value: Any, out: list, unwrap: Any = None) -> None:
    """Append every tensor inside `value` (nested lists, tuples, dicts) to `out`. `unwrap(obj)` may return the
    contents of other containers (e.g. the server's conditioning objects), or None."""
    import torch

    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            walk_tensors(item, out, unwrap)
    elif isinstance(value, dict):
        for item in value.values():
            walk_tensors(item, out, unwrap)
    elif unwrap is not None:
        inner = unwrap(value)
        if inner is not None:
            walk_tensors(inner, out, unwrap)


def _hand_out(value: Any) -> Any:
    """What a hit puts in the state: tensors as stored (version-checked), containers rebuilt, arrays/images copied."""
    import numpy as np
    import PIL.Image
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, list):
        return [_hand_out(v) for v in value]
    if isinstance(value, tuple):
        return type(value)(*map(_hand_out, value)) if hasattr(value, "_fields") else tuple(map(_hand_out, value))
    if isinstance(value, dict):
        return type(value)((k, _hand_out(v)) for k, v in value.items())
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, PIL.Image.Image):
        return value.copy()
    return value


class BlockCache:
    """LRU cache of block outputs keyed on inputs, components and config (see the module docstring)."""

    def __init__(self, max_memory: int | str = "2GB") -> None:
        from ..components.offload import parse_size

        self.max_memory = parse_size(max_memory)
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = self.uncached = 0
        self._digests: dict[int, tuple[weakref.ref, int, bytes]] = {}
        self._applies: dict[int, tuple[weakref.ref, bool]] = {}
        self._lock = threading.RLock()  # entries and counters; blocks themselves run outside it

    # -- bookkeeping ----------------------------------------------------------------------------------
    def info(self) -> BlockCacheInfo:
        return BlockCacheInfo(self.hits, self.misses, self.uncached, self._bytes, self.max_memory, len(self._entries))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self._digests.clear()

    def _evict(self) -> None:
        while self._bytes > self.max_memory and self._entries:
            _, entry = self._entries.popitem(last=False)
            self._bytes -= entry.nbytes

    # -- which blocks ---------------------------------------------------------------------------------
    def applies_to(self, block: Any) -> bool:
        known = self._applies.get(id(block))
        if known is not None and known[0]() is block:
            return known[1]
        result = self._decide(block)
        self._applies[id(block)] = (weakref.ref(block), result)
        return result

    @staticmethod
    def _decide(block: Any) -> bool:
        from ..blocks.loop import LoopSequentialPipelineBlocks
        from ..components.schedulers import SchedulerMixin

        if getattr(block, "cacheable", True) is False:
            return False
        if block.sub_blocks and not isinstance(block, LoopSequentialPipelineBlocks):
            return False  # composites: their children are looked up one by one
        io = block._io()
        if any(p.name == "generator" for p in io.inputs):
            return False
        for spec in io.components:
            hint = spec.type_hint
            if isinstance(hint, type) and issubclass(hint, SchedulerMixin):
                return False
        return True

    # -- running --------------------------------------------------------------------------------------
    def run(self, block: Any, components: Any, state: Any, call: Any, name: str) -> tuple[bool, Any]:
        try:
            key, keep_alive = self._key(block, components, state)
        except _Uncacheable as why:
            self.uncached += 1
            logger.debug("block cache: %s (%s) runs uncached: %s", name, type(block).__name__, why)
            return False, call(name, block, components, state)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and not entry.intact():
                logger.debug("block cache: %s output changed in place since it was cached; re-running", name)
                del self._entries[key]
                self._bytes -= entry.nbytes
                entry = None
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
        if entry is not None:
            for out_name, value, kwargs_type in entry.outputs:
                state.set(out_name, _hand_out(value), kwargs_type)
            return True, (components, state)
        before = dict(state.values)
        result = call(name, block, components, state)
        self._store(key, keep_alive, type(block).__name__, before, result[1])
        return False, result

    def _store(self, key: tuple, keep_alive: tuple, block: str, before: dict, state: Any) -> None:
        missing = object()
        groups = {n: kt for kt, names in state.kwargs_mapping.items() for n in names}
        outputs = [(n, v, groups.get(n)) for n, v in state.values.items() if before.get(n, missing) is not v]
        tensors: list = []
        for _, value, _ in outputs:
            walk_tensors(value, tensors)
        storages = {}
        for t in tensors:
            try:
                storage = t.untyped_storage()
                storages[(storage.data_ptr(), t.device)] = storage.nbytes()
            except (RuntimeError, NotImplementedError):
                storages[id(t)] = t.numel() * t.element_size()
        nbytes = sum(storages.values())
        if nbytes > self.max_memory:
            logger.debug("block cache: %s outputs (%d bytes) exceed max_memory; not cached", block, nbytes)
            return
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= previous.nbytes
            self._entries[key] = _Entry(block, outputs, [(t, t._version) for t in tensors], keep_alive, nbytes)
            self._bytes += nbytes
            self._evict()

    # -- keys ------------------------------------------------------------------------------------------
    def _key(self, block: Any, components: Any, state: Any) -> tuple[tuple, tuple]:
        io = block._io()
        values = state.values
        parts: list = [type(block).__module__, type(block).__qualname__]
        for name, default, _, _ in io.read_plan:
            value = values.get(name)
            parts.append((name, self._fp(default if value is None else value)))
        for kwargs_type in io.group_plan:
            group = state.get_by_kwargs(kwargs_type)
            parts.append((kwargs_type, tuple((k, self._fp(v)) for k, v in sorted(group.items()))))
        keep_alive = []
        for spec in io.components:
            try:
                obj = getattr(components, spec.name)
            except Exception:  # not loaded / not given: the block will report it when it runs
                obj = None
            parts.append((spec.name, self._component_fp(obj)))
            if obj is not None:
                keep_alive.append(obj)
        for config in io.configs:
            try:
                value = getattr(components, config.name)
            except Exception:
                value = config.default
            parts.append((config.name, self._fp(value)))
        own = {k: v for k, v in vars(block).items() if not k.startswith("_") and k != "loop_step"}
        if own:
            parts.append(("block", self._fp(own)))
        return tuple(parts), tuple(keep_alive)

    def _fp(self, value: Any) -> Any:
        import numpy as np
        import PIL.Image
        import torch

        if value is None or isinstance(value, (bool, int, float, str, bytes, complex)):
            return (type(value).__name__, value)
        if isinstance(value, torch.Tensor):
            return ("tensor", str(value.dtype), tuple(value.shape), str(value.device), self._tensor_digest(value))
        if isinstance(value, (list, tuple)):
            return (type(value).__name__, tuple(self._fp(v) for v in value))
        if isinstance(value, dict):
            return ("dict", tuple((self._fp(k), self._fp(v)) for k, v in value.items()))
        if isinstance(value, PIL.Image.Image):
            return ("pil", value.mode, value.size, hashlib.blake2b(value.tobytes(), digest_size=16).digest())
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise _Uncacheable("numpy array of objects")
            data = np.ascontiguousarray(value)
            return ("ndarray", str(value.dtype), value.shape, hashlib.blake2b(data.tobytes(), digest_size=16).digest())
        if isinstance(value, (torch.dtype, torch.device)):
            return (type(value).__name__, str(value))
        if isinstance(value, (np.generic,)):
            return ("np", str(value.dtype), value.item())
        raise _Uncacheable(f"no fingerprint for an input of type {type(value).__name__}")

    def _tensor_digest(self, tensor: Any) -> bytes:
        import torch

        memo = self._digests.get(id(tensor))
        if memo is not None and memo[0]() is tensor and memo[1] == tensor._version:
            return memo[2]
        if tensor.is_sparse or tensor.is_quantized:
            raise _Uncacheable("sparse or quantized tensor")
        data = tensor.detach()
        if data.device.type != "cpu":
            data = data.cpu()
        flat = data.contiguous().reshape(-1)
        if flat.dtype == torch.bool:
            flat = flat.to(torch.uint8)
        raw = flat.view(torch.uint8).numpy() if flat.numel() else b""
        digest = hashlib.blake2b(memoryview(raw) if flat.numel() else raw, digest_size=16).digest()
        if len(self._digests) > 4096:
            self._digests = {k: v for k, v in self._digests.items() if v[0]() is not None}
        self._digests[id(tensor)] = (weakref.ref(tensor), tensor._version, digest)
        return digest

    def _component_fp(self, obj: Any) -> Any:
        import torch

        if obj is None:
            return None
        if isinstance(obj, torch.nn.Module):
            return ("module", id(obj), _module_version(obj))
        config = getattr(obj, "config", None)
        if config is not None and hasattr(config, "items"):
            public = {k: v for k, v in vars(obj).items() if not k.startswith("_")}
            try:
                return ("config", type(obj).__qualname__, self._fp(dict(config)), self._fp(public))
            except _Uncacheable:
                return ("object", id(obj))
        if hasattr(obj, "get_vocab") and hasattr(obj, "__len__"):  # a tokenizer: added tokens change it
            return ("tokenizer", id(obj), len(obj))
        return ("object", id(obj))


def _module_version(module: Any) -> tuple:
    """Changes whenever weights are replaced or edited in place, or LoRA adapters are loaded, scaled, fused,
    switched or disabled."""
    parts: list = [getattr(module, "_diffblocks_adapter_version", 0), module.training]
    for tensor in module.parameters():
        parts.append((tensor.data_ptr(), tensor._version))
    for tensor in module.buffers():
        parts.append((tensor.data_ptr(), tensor._version))
    for sub in module.modules():
        if hasattr(sub, "lora_A") and hasattr(sub, "scaling"):
            parts.append((repr(sorted(sub.scaling.items())), repr(getattr(sub, "active_adapters", None)),
                          repr(getattr(sub, "merged_adapters", None)), getattr(sub, "disable_adapters", None)))
    return tuple(parts)
