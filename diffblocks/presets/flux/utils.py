"""Flux-only helpers: latent packing, position ids, sizes (the helpers every family shares are in
`presets.common.utils`).

Flux works on *packed* latents: each 2x2 patch of the 16-channel VAE latent becomes one token of 64 features,
so the latent grid must have even sides and the image sides must be multiples of ``2 * vae_scale_factor``.
"""

from __future__ import annotations

from typing import Any

import torch

from ...blocks import BlockInputError
from ..common.utils import check_size_limit, optional_component, vae_scale_factor

DEFAULT_SAMPLE_SIZE = 128  # latent side of the default image (1024 px with the 8x Flux VAE)
# image/mask processors of the Flux presets: 8x VAE x 2x2 packing, 16 latent channels
PROCESSOR_CONFIG = {"vae_scale_factor": 16, "vae_latent_channels": 16}
# true CFG is off by default (FLUX.1-dev is guidance-distilled); `true_cfg_scale` turns it on per call
DEFAULT_TRUE_CFG_SCALE = 1.0


def latent_channels(components: Any) -> int:
    transformer = optional_component(components, "transformer")
    if transformer is not None:
        return transformer.config.in_channels // 4
    vae = optional_component(components, "vae")
    return vae.config.latent_channels if vae is not None else 16


def resolve_size(block: str, components: Any, height: int | None, width: int | None) -> tuple[int, int]:
    """Height and width in pixels: defaults from the VAE, checked to be multiples of ``2 * vae_scale_factor``."""
    factor = vae_scale_factor(components)
    default = DEFAULT_SAMPLE_SIZE * factor
    height = int(height) if height is not None else default
    width = int(width) if width is not None else default
    multiple = 2 * factor
    if height % multiple or width % multiple or height <= 0 or width <= 0:
        raise BlockInputError(
            f"Block {block!r}: inputs 'height' and 'width' must be positive multiples of {multiple} (2 x the VAE's downscale "
            f"factor {factor}, for the 2x2 latent patches), got height={height}, width={width}.",
            block=block, input_name="height" if height % multiple or height <= 0 else "width")
    check_size_limit(block, components, 1, height, width)
    return height, width


def latent_size(components: Any, height: int, width: int) -> tuple[int, int]:
    factor = vae_scale_factor(components)
    return height // factor, width // factor


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, C * 4): one token per 2x2 patch, patch-major within the token."""
    b, c, h, w = latents.shape
    latents = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return latents.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of `pack_latents` for a latent grid of `height` x `width`."""
    b, _, features = latents.shape
    latents = latents.view(b, height // 2, width // 2, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(b, features // 4, height, width)


def image_ids(latent_height: int, latent_width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """RoPE ids of the image tokens: (0, row, col) per 2x2 patch, row-major."""
    ids = torch.zeros(latent_height // 2, latent_width // 2, 3)
    ids[..., 1] = torch.arange(latent_height // 2)[:, None]
    ids[..., 2] = torch.arange(latent_width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)
