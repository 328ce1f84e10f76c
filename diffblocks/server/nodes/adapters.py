"""LoRA adapters for LoraLoader: loaded once per checkpoint pipeline, activated per use.

ComfyUI's LoraLoader returns a patched copy of MODEL / CLIP and leaves its inputs untouched. Here the LoRA is
injected once into the pipeline's modules (peft layers, through `load_lora_weights`) under an adapter name derived
from the file, and each handle lists the adapters it carries with their strengths; the nodes that run a model
(`CLIPTextEncode`, the samplers) activate exactly their handle's adapters (or disable LoRA) before they run. So
branches of one workflow with and without a LoRA share the weights and still get their own results.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["active_loras", "ensure_lora"]


def _adapter_name(lora_name: str) -> str:
    stem = re.sub(r"[^0-9A-Za-z_]", "_", Path(lora_name).stem)[:40]
    return f"lora_{stem}_{hashlib.blake2b(lora_name.encode(), digest_size=4).hexdigest()}"


def ensure_lora(pipe: Any, path: Path, lora_name: str) -> str:
    """The adapter name of `lora_name` on `pipe`, loading the file the first time."""
    adapter = _adapter_name(lora_name)
    loaded = {a for names in pipe.get_list_adapters().values() for a in names}
    if adapter not in loaded:
        pipe.load_lora_weights(str(path), adapter_name=adapter)
    return adapter


@contextlib.contextmanager
def active_loras(pipe: Any, loras: Sequence[tuple[str, float]], components: Sequence[str]) -> Iterator[None]:
    """Activate exactly `loras` ((adapter, strength), ...) on `components` of `pipe` (LoRA off where none of
    them applies)."""
    from ...components.adapters import lora as _lora

    listed = pipe.get_list_adapters()
    for comp in components:
        model = getattr(pipe, comp, None)
        if model is None or comp not in listed:
            continue
        own = [(name, weight) for name, weight in loras if name in listed[comp]]
        if own:
            _lora.enable_lora(model, True)
            _lora.set_adapters(model, [n for n, _ in own], [w for _, w in own])
        else:
            _lora.enable_lora(model, False)
    yield
