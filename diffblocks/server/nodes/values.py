"""The values that travel between core nodes, and what each preset family provides to build on.

ComfyUI's socket types map to:
- MODEL -> `ModelHandle` (the loaded pipeline whose denoiser and scheduler config the samplers use),
- CLIP -> `ClipHandle` (the same pipeline's text encoders and tokenizers, plus CLIPSetLastLayer's clip skip),
- VAE -> `VaeHandle`,
- CONDITIONING -> `Conditioning` (the text-encoder step's embeddings, plus ControlNet hints and Flux guidance),
- LATENT -> a dict as in ComfyUI: `{"samples": tensor}`, latents in the denoiser's space (after the VAE scaling;
  Flux latents unpacked to (B, C, h, w)); an EmptyLatentImage also records `"pixel_size"` so the sampler draws
  noise of the model's own latent shape (channels and VAE factor of the loaded checkpoint);
- IMAGE -> a float tensor (B, H, W, 3) in [0, 1]; MASK -> a float tensor (B, H, W) in [0, 1] (ComfyUI's layouts).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from typing import Any

import torch

__all__ = ["FAMILIES", "ClipHandle", "Conditioning", "ControlHint", "ModelHandle", "VaeHandle", "family_module",
           "image_to_nchw", "nchw_to_image", "tensor_bytes"]

# preset family -> its module (block dicts TEXT2IMAGE_BLOCKS, IMAGE2IMAGE_BLOCKS, ...)
FAMILIES: dict[str, str] = {"sd": "diffblocks.presets.sd", "sdxl": "diffblocks.presets.sdxl",
                            "flux": "diffblocks.presets.flux"}


def family_module(family: str):
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
    return importlib.import_module(FAMILIES[family])


@dataclass(eq=False)
class ModelHandle:
    """MODEL: a loaded pipeline's denoiser (unet or transformer) and its scheduler config; `loras` lists the
    LoRA adapters (name, strength) applied by LoraLoader on the way."""

    holds_models = True
    family: str
    pipe: Any
    name: str
    loras: tuple[tuple[str, float], ...] = ()

    @property
    def denoiser_name(self) -> str:
        return "transformer" if self.family == "flux" else "unet"

    @property
    def denoiser(self) -> Any:
        return getattr(self.pipe, self.denoiser_name)


@dataclass(eq=False)
class ClipHandle:
    """CLIP: the text encoders and tokenizers of a loaded pipeline; `clip_skip` as the presets take it (None: the
    last layer; CLIPSetLastLayer's -2 is clip_skip 1)."""

    holds_models = True
    family: str
    pipe: Any
    name: str
    clip_skip: int | None = None
    loras: tuple[tuple[str, float], ...] = ()

    def with_clip_skip(self, clip_skip: int | None) -> ClipHandle:
        return replace(self, clip_skip=clip_skip)


@dataclass(eq=False)
class VaeHandle:
    holds_models = True
    family: str
    vae: Any
    name: str
    exact: bool = True  # False: a 4-channel VAE of unknown family (SD 1.x/2.x or SDXL), whose latents fit either

    @property
    def latent_family(self) -> str | None:
        """The family tag its latents get (None: usable by SD and SDXL models)."""
        return self.family if self.exact else None

    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


@dataclass(eq=False)
class ControlHint:
    """One ControlNetApply(Advanced) on a conditioning: the net, its image (IMAGE layout) and its schedule."""

    holds_models = True
    controlnet: Any
    image: torch.Tensor
    strength: float
    start_percent: float = 0.0
    end_percent: float = 1.0


@dataclass(eq=False)
class Conditioning:
    """CONDITIONING: the positive embeddings a text-encoder step produced (`prompt_embeds`, and per family
    `pooled_prompt_embeds`), with the family they belong to; `guidance` is Flux's distilled guidance
    (FluxGuidance), `controls` the ControlNet hints applied to it."""

    family: str
    embeds: dict[str, torch.Tensor]
    guidance: float | None = None
    controls: tuple[ControlHint, ...] = ()


def tensor_bytes(value: Any, seen: set[int] | None = None) -> int:
    """Bytes of the distinct tensor storages in a node output (models held by handles are not counted: the
    ComponentsManager owns them)."""
    seen = set() if seen is None else seen
    if isinstance(value, torch.Tensor):
        try:
            ptr = value.untyped_storage().data_ptr()
            size = value.untyped_storage().nbytes()
        except RuntimeError:
            return 0
        if ptr in seen:
            return 0
        seen.add(ptr)
        return size
    if getattr(type(value), "holds_models", False):
        return 0
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in value)
    if isinstance(value, dict):
        return sum(tensor_bytes(v, seen) for v in value.values())
    if isinstance(value, Conditioning):
        return tensor_bytes(value.embeds, seen) + sum(tensor_bytes(c.image, seen) for c in value.controls)
    return 0


def image_to_nchw(image: torch.Tensor) -> torch.Tensor:
    """IMAGE (B, H, W, C) -> (B, C, H, W), both in [0, 1]."""
    if image.ndim == 3:
        image = image[None]
    return image.permute(0, 3, 1, 2).contiguous()


def nchw_to_image(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> IMAGE (B, H, W, C) float32 on the CPU."""
    return images.permute(0, 2, 3, 1).float().cpu().contiguous()
