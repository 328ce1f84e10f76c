"""A guard against image sizes that cannot fit: refuse in milliseconds with the estimated size, before any work.

The estimate counts the latents and the largest activations of the VAE decoder at full resolution (three
feature maps of its first-block width; the decoder's last stage runs at the output size). Real use needs more,
so a refused size would not have run. The default limit is the larger of this machine's RAM and its largest
accelerator's memory; raise or lift it with `diffblocks.set_size_limit(bytes_or_None)` or the
`DIFFBLOCKS_MAX_IMAGE_BYTES` environment variable.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["estimate_image_bytes", "get_size_limit", "set_size_limit", "format_bytes"]

_UNSET = object()
_limit: Any = _UNSET


def _machine_memory() -> int:
    try:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        host = 64 * 2**30
    device = 0
    try:
        import torch

        if torch.cuda.is_available():
            device = max(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
    except Exception:  # no usable accelerator: the host limit applies
        device = 0
    return max(host, device)


def set_size_limit(max_bytes: int | None) -> None:
    """The most estimated bytes one generation may need; None lifts the limit."""
    global _limit
    if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes <= 0):
        raise ValueError(f"set_size_limit: expected a positive number of bytes or None, got {max_bytes!r}")
    _limit = max_bytes


def get_size_limit() -> int | None:
    if _limit is not _UNSET:
        return _limit
    env = os.environ.get("DIFFBLOCKS_MAX_IMAGE_BYTES")
    if env:
        return None if env.lower() in ("none", "0", "off") else int(env)
    return _machine_memory()


def estimate_image_bytes(batch: int, height: int, width: int, latent_channels: int, factor: int,
                         decoder_channels: int, element_size: int) -> int:
    latents = batch * latent_channels * (height // max(factor, 1)) * (width // max(factor, 1))
    decoder = batch * height * width * (3 * decoder_channels + 3)
    return (latents + decoder) * element_size


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"
