"""Node outputs kept between prompts, keyed by input signature, bounded in bytes (least recently used first).

A node's signature is a digest of its class, its constant inputs, its `fingerprint` (what else decides its output,
e.g. the bytes of an input file) and, for each linked input, the signature of the source node and the output
slot. Equal signatures mean equal outputs, so a node whose signature is unchanged since an earlier prompt is not
run again: editing the seed of a KSampler re-runs the sampler and everything after it, never the loader or the
text encoders. Randomness is part of the inputs (the seed), so a sampler is keyed by its seed like any other value.

Bytes counted: the distinct tensor storages in an entry's outputs (latents, images, embeddings). Models inside
handles (MODEL, CLIP, VAE) are not counted: the shared ComponentsManager owns them, and evicting a loader's entry
only means the next prompt asks the manager again. Tensors handed out are checked on every hit: an entry whose
tensors were changed in place since they were stored is dropped instead of served.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from ..runtime.cache import walk_tensors
from .nodes.values import tensor_bytes

__all__ = ["CacheEntry", "NodeOutputCache", "signature"]


@dataclass
class CacheEntry:
    outputs: tuple
    ui: dict[str, Any] | None
    nbytes: int
    versions: list[tuple[torch.Tensor, int]]

    def intact(self) -> bool:
        return all(t._version == v for t, v in self.versions)


def _conditioning_embeds(value: Any) -> dict | None:
    embeds = getattr(value, "embeds", None)
    return embeds if isinstance(embeds, dict) else None


def signature(class_type: str, constants: dict[str, Any], links: dict[str, tuple[str, int]],
              fingerprint: Any) -> str:
    """The cache key of one node run (hex digest)."""
    payload = {"class_type": class_type, "constants": constants,
               "links": {name: [sig, slot] for name, (sig, slot) in links.items()}, "fingerprint": fingerprint}
    data = json.dumps(payload, sort_keys=True, default=repr).encode()
    return hashlib.blake2b(data, digest_size=20).hexdigest()


class NodeOutputCache:
    def __init__(self, max_memory: int) -> None:
        self.max_memory = int(max_memory)
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if not entry.intact():
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, key: str, outputs: tuple, ui: dict[str, Any] | None) -> CacheEntry:
        tensors: list[torch.Tensor] = []
        walk_tensors(outputs, tensors, _conditioning_embeds)
        entry = CacheEntry(outputs, ui, tensor_bytes(outputs), [(t, t._version) for t in tensors])
        with self._lock:
            if key in self._entries:
                self._drop(key)
            if entry.nbytes <= self.max_memory:
                self._entries[key] = entry
                self._bytes += entry.nbytes
                while self._bytes > self.max_memory and self._entries:
                    self._drop(next(iter(self._entries)))
        return entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.nbytes
