"""Live previews: a per-step image from the current latents, by a linear latent-to-RGB projection or the VAE.

`PreviewCallback` is a `callback_on_step_end` (reference signature) that calls `on_preview(step_index, timestep,
images)` every `every` steps with PIL images: a linear projection of each latent pixel to RGB (microseconds; at
latent resolution, one pixel per latent), or a full VAE decode every `vae_every` steps.

The projection factors per family (`LATENT_RGB`) are the published ones ComfyUI ships for the real VAEs
(comfy/latent_formats.py: SD15, SDXL, Flux; they apply to the latents as the denoiser sees them, i.e. after the
VAE's scaling/shift, and map to [-1, 1]). They cannot be re-derived here without the real VAE weights;
`fit_latent_rgb` fits factors by least squares against any VAE decoder you have (a real one, or the tiny test
fixtures) and `projection_error` measures a projection against the full decode; bench/previews.py reports both
per family on the tiny fixture VAEs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["LATENT_RGB", "LatentRGB", "PreviewCallback", "fit_latent_rgb", "latent_family", "projection_error",
           "vae_decode_latents"]


@dataclass(frozen=True)
class LatentRGB:
    """rgb = latents . weight + bias, in [-1, 1] (weight: one RGB row per latent channel)."""

    weight: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    source: str = ""

    def project(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 3, h, w) RGB in [0, 1]."""
        weight = torch.tensor(self.weight, dtype=torch.float32, device=latents.device)
        if latents.shape[1] != weight.shape[0]:
            raise ValueError(f"latent-to-RGB factors for {weight.shape[0]} channels got latents with "
                             f"{latents.shape[1]} channels (shape {tuple(latents.shape)})")
        bias = torch.tensor(self.bias, dtype=torch.float32, device=latents.device)
        rgb = torch.einsum("bchw,cr->brhw", latents.float(), weight) + bias[None, :, None, None]
        return ((rgb + 1) / 2).clamp(0, 1)


_COMFY = "ComfyUI comfy/latent_formats.py ({})"
LATENT_RGB: dict[str, LatentRGB] = {
    "sd": LatentRGB(((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721),
                     (-0.2120, -0.2616, -0.7177)), source=_COMFY.format("SD15")),
    "sdxl": LatentRGB(((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
                       (-0.3165, -0.2492, -0.2188)), (0.1084, -0.0175, -0.0011), source=_COMFY.format("SDXL")),
    "flux": LatentRGB(((-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
                       (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
                       (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
                       (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
                       (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
                       (-0.1262, -0.0982, -0.0778)), (-0.0329, -0.0718, -0.0851), source=_COMFY.format("Flux")),
}


def latent_family(pipe: Any) -> str:
    """"flux", "sdxl" or "sd" from the pipeline's denoiser."""
    components = getattr(pipe, "components", {}) or {}
    if components.get("transformer") is not None:
        return "flux"
    unet = components.get("unet")
    if unet is not None and getattr(unet.config, "addition_embed_type", None) == "text_time":
        return "sdxl"
    return "sd"


def _grid(latents: torch.Tensor, height: int | None, width: int | None, vae_scale_factor: int) -> torch.Tensor:
    """Flux's packed (B, tokens, C*4) latents -> the (B, C, h, w) grid; 4-D latents unchanged."""
    if latents.ndim == 4:
        return latents
    from .flux.utils import unpack_latents

    tokens = latents.shape[1]
    if height is not None and width is not None:
        h, w = 2 * (height // (vae_scale_factor * 2)), 2 * (width // (vae_scale_factor * 2))
    else:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"packed latents with {tokens} tokens are not square; give PreviewCallback the "
                             f"height and width of the image")
        h = w = 2 * side
    return unpack_latents(latents, h, w)


def vae_decode_latents(vae: Any, latents: torch.Tensor, family: str) -> torch.Tensor:
    """(B, C, h, w) denoiser-space latents -> (B, 3, H, W) RGB in [0, 1] through the full VAE decode."""
    from .common.utils import unscale_latents, vae_upcast

    if family == "flux":
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
    else:
        latents = unscale_latents(vae, latents)
    with vae_upcast(vae):
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    return ((image.float() + 1) / 2).clamp(0, 1)


def fit_latent_rgb(latents: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor],
                   source: str = "least squares fit") -> LatentRGB:
    """Least-squares latent-to-RGB factors: `decode(latents)` gives (B, 3, H, W) in [-1, 1]; its mean over each
    latent pixel's patch is regressed on that pixel's channels plus a constant."""
    with torch.no_grad():
        image = decode(latents).float()
    factor = image.shape[-1] // latents.shape[-1]
    target = torch.nn.functional.avg_pool2d(image, factor) if factor > 1 else image
    x = latents.float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    x = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(x, y).solution
    weight = tuple(tuple(float(v) for v in row) for row in solution[:-1])
    return LatentRGB(weight, tuple(float(v) for v in solution[-1]), source)


def projection_error(rgb: LatentRGB, latents: torch.Tensor, decoded: torch.Tensor) -> float:
    """Mean absolute error in [0, 1] units between the projection (nearest-upsampled to the image size) and a
    full decode (B, 3, H, W) in [0, 1]."""
    preview = rgb.project(latents)
    preview = torch.nn.functional.interpolate(preview, size=decoded.shape[-2:], mode="nearest")
    return float((preview - decoded.float()).abs().mean())


def _to_pil(images: torch.Tensor) -> list:
    import PIL.Image

    array = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
    return [PIL.Image.fromarray(a) for a in array]


class PreviewCallback:
    """A step-end callback that renders previews: `pipe(..., callback_on_step_end=PreviewCallback(show))`.

    `on_preview(step_index, timestep, images)` receives PIL images every `every` steps: the linear projection
    (`factors`, default: the family's published factors) or, every `vae_every` steps, the full VAE decode.
    Flux latents are packed; give `height`/`width` for non-square images. It returns the callback kwargs
    unchanged, so the generation is not affected.
    """

    tensor_inputs = ["latents"]

    def __init__(self, on_preview: Callable[[int, Any, list], Any], every: int = 1, vae_every: int | None = None,
                 factors: LatentRGB | None = None, height: int | None = None, width: int | None = None) -> None:
        if not callable(on_preview):
            raise TypeError("PreviewCallback(on_preview): a callable (step_index, timestep, images) is required")
        if every < 1 or (vae_every is not None and vae_every < 1):
            raise ValueError(f"PreviewCallback: every and vae_every must be >= 1, got {every} and {vae_every}")
        self.on_preview, self.every, self.vae_every = on_preview, every, vae_every
        self.factors, self.height, self.width = factors, height, width

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        n = step_index + 1
        use_vae = self.vae_every is not None and n % self.vae_every == 0
        if not use_vae and n % self.every:
            return callback_kwargs
        family = latent_family(pipe)
        vae = getattr(pipe, "components", {}).get("vae")
        scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        grid = _grid(callback_kwargs["latents"], self.height, self.width, scale)
        with torch.no_grad():
            if use_vae:
                images = vae_decode_latents(vae, grid, family)
            else:
                images = (self.factors or LATENT_RGB[family]).project(grid)
        self.on_preview(step_index, timestep, _to_pil(images))
        return callback_kwargs
