"""Helpers shared by the preset steps of every family: component lookups, sizes, batch checks, latent scaling,
the default component specs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import PIL.Image
import torch

from ...blocks import BlockInputError, InputParam
from ...components.image_processor import VaeImageProcessor
from ...components.models import AutoencoderKL
from ...components.spec import ComponentSpec
from ...guiders import ClassifierFreeGuidance

__all__ = [
    "as_list", "check_generators", "check_image", "check_size", "default_size", "execution_device",
    "guidance_inputs", "guider_for_call", "guider_spec", "image_processor_spec", "latent_stats",
    "mask_processor_spec", "optional_component", "repeat_to_batch", "retrieve_latents", "scale_latents",
    "unscale_latents", "vae_scale_factor", "vae_upcast",
]

# the denoiser first: it decides where latents live; then the VAE and the text encoders
_DEVICE_MODULES = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2")


def guider_spec(guidance_scale: float = 7.5) -> ComponentSpec:
    """The default guider: CFG at the family's standard scale (7.5 for SD, 5.0 for SDXL, 1.0 = off for Flux)."""
    return ComponentSpec("guider", ClassifierFreeGuidance, config={"guidance_scale": guidance_scale},
                         default_creation_method="from_config")


def image_processor_spec(name: str = "image_processor", **config: Any) -> ComponentSpec:
    """A `VaeImageProcessor` built from config (8x VAE unless `vae_scale_factor` is given)."""
    return ComponentSpec(name, VaeImageProcessor, config={"vae_scale_factor": 8, **config},
                         default_creation_method="from_config")


def mask_processor_spec(**config: Any) -> ComponentSpec:
    """The inpainting mask processor: binarized grayscale in [0, 1]."""
    return image_processor_spec("mask_processor", do_normalize=False, do_binarize=True, do_convert_grayscale=True,
                                **config)


def guidance_inputs() -> list[InputParam]:
    return [
        InputParam("guidance_scale", type_hint=float,
                   description="CFG scale for this call (overrides the guider's; <= 1 turns guidance off)"),
        InputParam("guidance_rescale", type_hint=float,
                   description="rescale the guided prediction's std towards the conditional one (0 = off)"),
    ]


def guider_for_call(components: Any, guidance_scale: float | None = None, guidance_rescale: float | None = None,
                    for_text: bool = False):
    """The guider for one call: the component, or a copy with the per-call knobs (the component is untouched).

    `for_text=True` (text encoding) also accounts for guidance-embedding UNets, which run no unconditional pass.
    """
    guider = components.guider
    unet = optional_component(components, "unet")
    if for_text and unet is not None and getattr(unet.config, "time_cond_proj_dim", None) is not None \
            and hasattr(guider, "guidance_scale"):
        return guider.with_overrides(guidance_scale=1.0)
    changes = {}
    if guidance_scale is not None:
        changes["guidance_scale"] = float(guidance_scale)
    if guidance_rescale is not None:
        changes["guidance_rescale"] = float(guidance_rescale)
    return guider.with_overrides(**changes) if changes else guider


def vae_scale_factor(components: Any) -> int:
    vae = optional_component(components, "vae")
    return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8


def default_size(components: Any, height: int | None, width: int | None) -> tuple[int, int]:
    unet = optional_component(components, "unet")
    sample = unet.config.sample_size if unet is not None else 64
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    default = sample * vae_scale_factor(components)
    return int(height or default), int(width or default)


def optional_component(components: Any, name: str) -> Any:
    try:
        return getattr(components, name)
    except Exception:  # not a component of this pipeline / not given
        return None


def execution_device(components: Any) -> torch.device:
    """Where steps create tensors: the pipeline's `execution_device` (the offload device under auto offload),
    else the device of the first model component found."""
    device = optional_component(components, "execution_device")
    if device is not None:
        return torch.device(device)
    for name in _DEVICE_MODULES:
        module = optional_component(components, name)
        if isinstance(module, torch.nn.Module):
            for p in module.parameters():
                return p.device
    return torch.device("cpu")


def check_generators(block: str, generator: Any, total: int) -> None:
    if isinstance(generator, list) and len(generator) != total:
        raise BlockInputError(
            f"Block {block!r}: input 'generator' is a list of {len(generator)} generators, but the effective batch "
            f"is {total} (prompts x num_images_per_prompt); pass one generator per image or a single generator.",
            block=block, input_name="generator")


def retrieve_latents(vae: AutoencoderKL, image: torch.Tensor, generator: Any) -> torch.Tensor:
    """Sampled VAE latents, one generator per image when a list is given (the standard pipelines' order)."""
    if isinstance(generator, list):
        return torch.cat([vae.encode(image[i:i + 1]).latent_dist.sample(generator[i])
                          for i in range(image.shape[0])], dim=0)
    return vae.encode(image).latent_dist.sample(generator)


def latent_stats(vae: AutoencoderKL, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-channel (mean, std) from the VAE config, shaped to broadcast over `latents`; None when not set."""
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return None
    c = latents.shape[1]
    return (torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(1, c, 1, 1),
            torch.tensor(std, device=latents.device, dtype=latents.dtype).view(1, c, 1, 1))


def scale_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """VAE latents -> the UNet's latent space (the inverse of `unscale_latents`)."""
    stats = latent_stats(vae, latents)
    if stats is not None:
        return (latents - stats[0]) * vae.config.scaling_factor / stats[1]
    return vae.config.scaling_factor * latents


@contextlib.contextmanager
def vae_upcast(vae: AutoencoderKL) -> Iterator[bool]:
    """Run the VAE in fp32 for the block when it is fp16 and its config sets `force_upcast` (the fp16 SD/SDXL VAEs
    overflow); yields whether it did, and restores the dtype after."""
    dtype = vae.dtype
    upcast = dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        yield upcast
    finally:
        if upcast:
            vae.to(dtype=dtype)


def unscale_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    stats = latent_stats(vae, latents)
    if stats is not None:
        return latents * stats[1] / vae.config.scaling_factor + stats[0]
    return latents / vae.config.scaling_factor


def check_image(block: str, name: str, image: Any) -> None:
    if isinstance(image, (list, tuple)):
        if not image:
            raise BlockInputError(f"Block {block!r}: input {name!r} is an empty list.", block=block, input_name=name)
        for item in image:
            check_image(block, name, item)
        return
    if isinstance(image, PIL.Image.Image):
        if image.mode not in ("RGB", "RGBA", "L", "1", "P", "LA"):
            raise BlockInputError(f"Block {block!r}: input {name!r} is a PIL image in mode {image.mode!r}; expected "
                                  f"RGB (or L for masks). Convert with image.convert('RGB').",
                                  block=block, input_name=name)
        return
    import numpy as np

    if not isinstance(image, (torch.Tensor, np.ndarray)):
        raise BlockInputError(f"Block {block!r}: input {name!r} must be a PIL image, numpy array or torch tensor "
                              f"(or a list of them), got {type(image).__name__}.", block=block, input_name=name)


def as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_size(block: str, height: int, width: int, factor: int) -> None:
    factor = max(8, factor)  # the standard pipelines require multiples of 8 whatever the VAE
    if height % factor or width % factor:
        raise BlockInputError(
            f"Block {block!r}: height and width must be multiples of {factor}, "
            f"got height={height}, width={width}.", block=block, input_name="height")


def repeat_to_batch(block: str, what: str, tensor: torch.Tensor, total: int, interleave: bool = False
                    ) -> torch.Tensor:
    """Tile a batch of n to `total`: ``cat([x] * (total // n))`` (the standard pipelines' order), or each item
    `total // n` times in a row with `interleave=True`."""
    n = tensor.shape[0]
    if n == total:
        return tensor
    if total % n:
        raise BlockInputError(
            f"Block {block!r}: cannot repeat {n} {what} to the effective batch of {total} (prompts x "
            f"num_images_per_prompt); give 1 or a divisor of {total}.", block=block, input_name=what)
    if interleave:
        return tensor.repeat_interleave(total // n, dim=0)
    return tensor.repeat(total // n, *([1] * (tensor.ndim - 1)))
