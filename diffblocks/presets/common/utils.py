"""Helpers shared by the preset steps of every family: component lookups, sizes, batch checks, latent scaling,
the default component specs.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import PIL.Image
import torch

from ...blocks import BlockInputError, InputParam
from ...components.image_processor import VaeImageProcessor
from ...components.models import AutoencoderKL, DiagonalGaussianDistribution
from ...components.spec import ComponentSpec
from ...guiders import ClassifierFreeGuidance

__all__ = [
    "as_list", "check_finite", "check_generators", "check_image", "check_size", "check_size_limit",
    "default_size", "encode_posterior", "execution_device",
    "guidance_inputs", "guider_for_call", "guider_spec", "image_processor_spec", "latent_stats",
    "mask_processor_spec", "optional_component", "repeat_to_batch", "sample_posterior", "scale_latents",
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
                    for_text: bool = False, block: str = "guidance"):
    """The guider for one call: the component, or a copy with the per-call knobs (the component is untouched).

    `for_text=True` (text encoding) also accounts for guidance-embedding UNets, which run no unconditional pass.
    Non-finite knobs are refused in the name of `block`.
    """
    check_finite(block, "guidance_scale", guidance_scale)
    check_finite(block, "guidance_rescale", guidance_rescale)
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
    return (int(height) if height is not None else default), (int(width) if width is not None else default)


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
    items = generator if isinstance(generator, list) else [generator]
    wrong = [g for g in items if g is not None and not isinstance(g, torch.Generator)]
    if wrong:
        raise BlockInputError(
            f"Block {block!r}: input 'generator' must be a torch.Generator or a list of them (e.g. "
            f"torch.Generator().manual_seed(0)), got {type(wrong[0]).__name__} {wrong[0]!r}.",
            block=block, input_name="generator")
    if isinstance(generator, list) and len(generator) != total:
        raise BlockInputError(
            f"Block {block!r}: input 'generator' is a list of {len(generator)} generators, but the effective batch "
            f"is {total} (prompts x num_images_per_prompt); pass one generator per image or a single generator.",
            block=block, input_name="generator")


def encode_posterior(vae: AutoencoderKL, image: torch.Tensor) -> torch.Tensor:
    """The VAE posterior of `image` as its parameters (mean and log-variance stacked on channels, (N, 2C, h, w)).

    Deterministic (no generator), so a block computing it can be cached across calls; `sample_posterior` draws
    the latents. Sampling these parameters gives bit for bit what `vae.encode(image).latent_dist.sample(g)` gives.
    """
    return vae.encode(image).latent_dist.parameters


def sample_posterior(posterior: torch.Tensor, generator: Any) -> torch.Tensor:
    """Latents drawn from `encode_posterior` parameters (mean + std * noise), one generator per image when a list
    is given (the standard pipelines' order)."""
    if isinstance(generator, list):
        return torch.cat([DiagonalGaussianDistribution(posterior[i:i + 1]).sample(generator[i])
                          for i in range(posterior.shape[0])], dim=0)
    return DiagonalGaussianDistribution(posterior).sample(generator)


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


_UPCAST_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_UPCAST_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def vae_upcast(vae: AutoencoderKL) -> Iterator[bool]:
    """Run the VAE in fp32 for the block when it is fp16 and its config sets `force_upcast` (the fp16 SD/SDXL VAEs
    overflow); yields whether it did, and restores the dtype after.

    Upcasting changes the shared module's weights, so concurrent calls of one pipeline take turns through this
    section (a per-VAE lock, created the first time the VAE is upcast; the dtype is read under it)."""
    if not getattr(vae.config, "force_upcast", False):
        yield False
        return
    with _UPCAST_LOCKS_GUARD:
        lock = _UPCAST_LOCKS.get(vae)
        if lock is None and vae.dtype == torch.float16:
            lock = _UPCAST_LOCKS[vae] = threading.RLock()
    if lock is None:  # never fp16 so far: nobody upcasts it
        yield False
        return
    with lock:
        dtype = vae.dtype
        upcast = dtype == torch.float16
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


def check_finite(block: str, name: str, value: Any) -> None:
    """Numbers, tensors and arrays (or lists of them) must hold no NaN or infinite value."""
    import math
    import numbers

    import numpy as np

    if value is None or isinstance(value, bool):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            check_finite(block, name, item)
        return
    if isinstance(value, numbers.Real):
        bad = not math.isfinite(value)
    elif isinstance(value, torch.Tensor):
        bad = value.is_floating_point() and not bool(torch.isfinite(value).all())
    elif isinstance(value, np.ndarray):
        bad = np.issubdtype(value.dtype, np.floating) and not bool(np.isfinite(value).all())
    else:
        return
    if bad:
        shown = f"{value}" if isinstance(value, numbers.Real) else "values that are NaN or infinite"
        raise BlockInputError(f"Block {block!r}: input {name!r} must be finite, got {shown}.",
                              block=block, input_name=name)


def _channels(image: Any) -> int | None:
    """Channel count of an image tensor (N, C, H, W) / (C, H, W) or array (N, H, W, C) / (H, W, C)."""
    if isinstance(image, torch.Tensor):
        return image.shape[-3] if image.ndim in (3, 4) else None
    return image.shape[-1] if image.ndim in (3, 4) else None


def check_image(block: str, name: str, image: Any, channels: tuple[int, ...] | None = None) -> None:
    """A PIL image, array or tensor (or a non-empty list), finite; tensors/arrays with one of `channels`."""
    if isinstance(image, (list, tuple)):
        if not image:
            raise BlockInputError(f"Block {block!r}: input {name!r} is an empty list.", block=block, input_name=name)
        for item in image:
            check_image(block, name, item, channels)
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
    check_finite(block, name, image)
    found = _channels(image)
    if channels is not None and found not in channels:
        layout = "(N, C, H, W) or (C, H, W)" if isinstance(image, torch.Tensor) else "(N, H, W, C) or (H, W, C)"
        expected = " or ".join("3 (RGB pixels)" if c == 3 else f"{c} (latents)" for c in channels)
        raise BlockInputError(
            f"Block {block!r}: input {name!r} has shape {tuple(image.shape)}: {found} channels; expected {expected} "
            f"in the {layout} layout. Pass a PIL image (any mode) to have it converted.",
            block=block, input_name=name)


def as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_size(block: str, height: int, width: int, factor: int, batch: int = 1, components: Any = None) -> None:
    """Positive multiples of the VAE factor (at least 8), within the size limit (see runtime/limits.py)."""
    if height <= 0 or width <= 0:
        raise BlockInputError(f"Block {block!r}: inputs 'height' and 'width' must be positive, got height={height}, "
                              f"width={width}.", block=block, input_name="height" if height <= 0 else "width")
    factor = max(8, factor)  # the standard pipelines require multiples of 8 whatever the VAE
    if height % factor or width % factor:
        raise BlockInputError(
            f"Block {block!r}: height and width must be multiples of {factor}, "
            f"got height={height}, width={width}.", block=block, input_name="height")
    check_size_limit(block, components, batch, height, width)


def check_size_limit(block: str, components: Any, batch: int, height: int, width: int) -> None:
    """Refuse, before any work, a size whose estimated memory exceeds the limit (`diffblocks.set_size_limit`)."""
    from ...runtime.limits import estimate_image_bytes, format_bytes, get_size_limit

    limit = get_size_limit()
    if limit is None:
        return
    vae = optional_component(components, "vae") if components is not None else None
    config = getattr(vae, "config", None)
    decoder = (getattr(config, "block_out_channels", None) or [128])[0]
    latent = getattr(config, "latent_channels", 4)
    element = torch.empty((), dtype=vae.dtype).element_size() if isinstance(vae, torch.nn.Module) else 4
    factor = vae_scale_factor(components) if components is not None else 8
    needed = estimate_image_bytes(batch, height, width, latent, factor, decoder, element)
    if needed > limit:
        raise BlockInputError(
            f"Block {block!r}: height={height}, width={width} for {batch} image(s) needs an estimated "
            f"{format_bytes(needed)} (latents and VAE decoder activations), above the size limit of "
            f"{format_bytes(limit)}. Use a smaller size, or raise the limit with diffblocks.set_size_limit(n_bytes) "
            f"(None lifts it).", block=block, input_name="height")


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
