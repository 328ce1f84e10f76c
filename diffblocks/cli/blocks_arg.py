"""Resolving the blocks a command works on: a preset short name, `module:Class`, or a repo folder / id."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["NAMED_BLOCKS", "check_model_target", "resolve_blocks"]

# short names `diffblocks inspect NAME` understands: name -> (module, blocks class)
NAMED_BLOCKS: dict[str, tuple[str, str]] = {
    "toy": ("diffblocks.presets.toy", "ToyDiffusionBlocks"),
    "sd": ("diffblocks.presets.sd", "StableDiffusionAutoBlocks"),
    "sdxl": ("diffblocks.presets.sdxl", "StableDiffusionXLAutoBlocks"),
    "flux": ("diffblocks.presets.flux", "FluxAutoBlocks"),
}


def check_model_target(target: str, what: str = "target") -> None:
    """Refuse at once (no Hub round trips) a target that is no preset, no local path and no `org/name` repo id."""
    import difflib
    from pathlib import Path

    if target in NAMED_BLOCKS or Path(target).expanduser().exists():
        return
    if target.endswith(".safetensors") or target.startswith(("http://", "https://")):
        return  # a single file on the Hub: resolved by the single-file loader
    parts = target.split("/")
    presets = ", ".join(NAMED_BLOCKS)
    if len(parts) == 2 and all(parts) and not target.startswith((".", "~")):
        from ..components.hub import _in_cache

        host = None if _in_cache(target) else _unreachable_hub()  # a cached repo works offline
        if host:
            raise OSError(f"{what} {target!r} is not a local folder, and the Hugging Face Hub ({host}) cannot be "
                          f"reached (offline?). Use a local folder or a preset ({presets}), or run online.")
        return  # a Hub repo id: resolved (or refused) by the Hub
    close = difflib.get_close_matches(target, list(NAMED_BLOCKS), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{what} {target!r} is not a preset ({presets}), an existing local folder or "
                     f"file, module:Class, or a Hub repo id (org/name).{hint}")


def _unreachable_hub() -> str | None:
    """The Hub's host name when offline mode is on or the name does not resolve (the Hub client would retry for
    tens of seconds); None when it may be reachable."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if constants.HF_HUB_OFFLINE:
        return f"{host}, HF_HUB_OFFLINE is set"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return host
    return None


def resolve_blocks(target: str) -> Any:
    """A blocks instance from a short name, `module:Class` / `module.Class`, or a repo folder / id."""
    from ..blocks.base import ModularPipelineBlocks

    if target in NAMED_BLOCKS:
        module, name = NAMED_BLOCKS[target]
        return getattr(importlib.import_module(module), name)()
    if ":" in target or (target.count(".") >= 1 and not target.startswith((".", "/")) and "/" not in target):
        module_name, _, class_name = target.replace(":", ".").rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise SystemExit(f"diffblocks: cannot import blocks {target!r}: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, ModularPipelineBlocks)):
            raise SystemExit(f"diffblocks: {target!r} is not a ModularPipelineBlocks class")
        return cls()
    check_model_target(target)
    from ..runtime.pipeline import ModularPipeline

    return ModularPipeline.from_pretrained(target)._blocks
