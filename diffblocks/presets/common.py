"""Steps shared by the Stable Diffusion 1.x/2.x and SDXL presets.

Each step reproduces the arithmetic of the standard pipelines (including the order in which a seeded
generator is consumed), so a preset gives the same images as those pipelines for the same arguments.
Family-specific steps (text encoding, SDXL's added conditioning) live in `presets.sd` / `presets.sdxl`.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import PIL.Image
import torch

from ..blocks import (
    AutoPipelineBlocks,
    BlockInputError,
    InputParam,
    LoopSequentialPipelineBlocks,
    ModularPipelineBlocks,
    OutputParam,
)
from ..components.image_processor import VaeImageProcessor
from ..components.models import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from ..components.schedulers import (
    EulerDiscreteScheduler,
    denoising_end_timesteps,
    img2img_timesteps,
    randn_tensor,
    retrieve_timesteps,
)
from ..components.spec import ComponentSpec
from ..guiders import ClassifierFreeGuidance

logger = logging.getLogger(__name__)

__all__ = [
    "AutoControlNetDenoiseStep", "AutoControlNetInputStep", "AutoDecodeStep", "AutoDenoiseStep",
    "AutoPrepareLatentsStep", "AutoSetTimestepsStep", "AutoVaeEncoderStep", "InpaintSetTimestepsStep",
    "standard_workflows",
    "ControlNetDenoiseStep", "ControlNetInputStep", "ControlNetLoopDenoiser", "DecodeStep", "DenoiseLoopWrapper",
    "DenoiseStep", "Img2ImgPrepareLatentsStep", "Img2ImgSetTimestepsStep", "InpaintDecodeStep",
    "InpaintControlNetDenoiseStep", "InpaintDenoiseStep", "InpaintLoopAfterDenoiser", "InputStep", "InpaintLoopBeforeDenoiser", "InpaintPrepareLatentsStep",
    "InpaintVaeEncoderStep", "LoopAfterDenoiser", "LoopBeforeDenoiser", "LoopDenoiser", "PrepareLatentsStep",
    "SetTimestepsStep", "VaeEncoderStep", "guidance_scale_embedding", "guider_for_call", "vae_scale_factor",
]


# -- helpers -------------------------------------------------------------------------------------------------------
def guider_spec(guidance_scale: float = 7.5) -> ComponentSpec:
    """The default guider: CFG at the family's standard scale (7.5 for SD, 5.0 for SDXL)."""
    return ComponentSpec("guider", ClassifierFreeGuidance, config={"guidance_scale": guidance_scale},
                         default_creation_method="from_config")


def image_processor_spec(name: str = "image_processor", **config: Any) -> ComponentSpec:
    return ComponentSpec(name, VaeImageProcessor, config={"vae_scale_factor": 8, **config},
                         default_creation_method="from_config")


def mask_processor_spec() -> ComponentSpec:
    return image_processor_spec("mask_processor", do_normalize=False, do_binarize=True, do_convert_grayscale=True)


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
    unet = _optional(components, "unet")
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
    vae = _optional(components, "vae")
    return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8


def default_size(components: Any, height: int | None, width: int | None) -> tuple[int, int]:
    unet = _optional(components, "unet")
    sample = unet.config.sample_size if unet is not None else 64
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    default = sample * vae_scale_factor(components)
    return int(height or default), int(width or default)


def _optional(components: Any, name: str) -> Any:
    try:
        return getattr(components, name)
    except Exception:  # not a component of this pipeline / not given
        return None


def execution_device(components: Any) -> torch.device:
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = _optional(components, name)
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


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_size(block: str, height: int, width: int, factor: int) -> None:
    factor = max(8, factor)  # the standard pipelines require multiples of 8 whatever the VAE
    if height % factor or width % factor:
        raise BlockInputError(
            f"Block {block!r}: height and width must be multiples of {factor}, "
            f"got height={height}, width={width}.", block=block, input_name="height")


def repeat_to_batch(block: str, what: str, tensor: torch.Tensor, total: int, interleave: bool = False
                    ) -> torch.Tensor:
    n = tensor.shape[0]
    if n == total:
        return tensor
    if total % n:
        raise BlockInputError(f"Block {block!r}: cannot repeat {what} of batch {n} to the effective batch {total}; "
                              f"give 1 or {total} of them.", block=block, input_name=what)
    return tensor.repeat_interleave(total // n, dim=0) if interleave else tensor.repeat(total // n, 1, 1, 1)


# -- input normalisation -------------------------------------------------------------------------------------------
class InputStep(ModularPipelineBlocks):
    """Batch size and dtype from the text embeddings; repeats every embedding `num_images_per_prompt` times."""

    model_name = "stable-diffusion"
    # (conditional, unconditional, pooled?) embedding names this family produces
    embed_names: list[tuple[str, str, bool]] = [("prompt_embeds", "negative_prompt_embeds", False)]

    @property
    def description(self) -> str:
        return ("Input step: batch_size and dtype from prompt_embeds; repeats the embeddings "
                "num_images_per_prompt times and checks batch agreement (generators, negatives)")

    @property
    def inputs(self) -> list[InputParam]:
        params = [InputParam("num_images_per_prompt", type_hint=int, default=1),
                  InputParam("generator", description="torch.Generator or one per image")]
        for cond, uncond, _ in self.embed_names:
            params.append(InputParam(cond, type_hint=torch.Tensor, required=True))
            params.append(InputParam(uncond, type_hint=torch.Tensor))
        return params

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        outs = [OutputParam("batch_size", type_hint=int, description="number of prompts"),
                OutputParam("dtype", type_hint=torch.dtype)]
        for cond, uncond, _ in self.embed_names:
            outs += [OutputParam(cond, type_hint=torch.Tensor), OutputParam(uncond, type_hint=torch.Tensor)]
        return outs

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        name = type(self).__name__
        n = int(bs.num_images_per_prompt or 1)
        if n < 1:
            raise BlockInputError(f"Block {name!r}: num_images_per_prompt must be >= 1, got {n}.",
                                  block=name, input_name="num_images_per_prompt")
        first = getattr(bs, self.embed_names[0][0])
        bs.batch_size = first.shape[0]
        bs.dtype = first.dtype
        check_generators(name, bs.generator, bs.batch_size * n)
        for cond, uncond, _ in self.embed_names:
            for key in (cond, uncond):
                value = getattr(bs, key)
                if value is None:
                    continue
                if value.shape[0] != bs.batch_size:
                    raise BlockInputError(f"Block {name!r}: {key} has batch {value.shape[0]} but "
                                          f"{self.embed_names[0][0]} has {bs.batch_size}.", block=name, input_name=key)
                setattr(bs, key, value.repeat_interleave(n, dim=0) if n > 1 else value)
        self.set_block_state(state, bs)
        return components, state


# -- timesteps -----------------------------------------------------------------------------------------------------
class SetTimestepsStep(ModularPipelineBlocks):
    model_name = "stable-diffusion"

    @property
    def description(self) -> str:
        return "Set the scheduler's timesteps for text-to-image (custom timesteps/sigmas, SDXL denoising_end)"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("scheduler", EulerDiscreteScheduler)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("num_inference_steps", type_hint=int, default=50),
                InputParam("timesteps", type_hint=list), InputParam("sigmas", type_hint=list),
                InputParam("denoising_end", type_hint=float)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("timesteps", type_hint=torch.Tensor), OutputParam("num_inference_steps", type_hint=int)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        device = execution_device(components)
        bs.timesteps, bs.num_inference_steps = retrieve_timesteps(
            components.scheduler, bs.num_inference_steps, device, bs.timesteps, bs.sigmas)
        bs.timesteps, bs.num_inference_steps = denoising_end_timesteps(
            components.scheduler, bs.timesteps, bs.num_inference_steps, bs.denoising_end)
        self.set_block_state(state, bs)
        return components, state


class Img2ImgSetTimestepsStep(ModularPipelineBlocks):
    model_name = "stable-diffusion"
    default_strength = 0.8

    @property
    def description(self) -> str:
        return ("Set timesteps for image-to-image / inpainting: keep the last `strength` part of the schedule "
                "(or start at `denoising_start`); outputs the first timestep for noising")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("scheduler", EulerDiscreteScheduler)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("num_inference_steps", type_hint=int, default=50),
                InputParam("timesteps", type_hint=list), InputParam("sigmas", type_hint=list),
                InputParam("strength", type_hint=float, default=self.default_strength),
                InputParam("denoising_start", type_hint=float), InputParam("denoising_end", type_hint=float),
                InputParam("num_images_per_prompt", type_hint=int, default=1),
                InputParam("batch_size", type_hint=int, required=True)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("timesteps", type_hint=torch.Tensor), OutputParam("num_inference_steps", type_hint=int),
                OutputParam("latent_timestep", type_hint=torch.Tensor)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        name = type(self).__name__
        strength = float(bs.strength)
        if not 0.0 <= strength <= 1.0:
            raise BlockInputError(f"Block {name!r}: input 'strength' must be in [0.0, 1.0], got {strength}.",
                                  block=name, input_name="strength")
        start, end = bs.denoising_start, bs.denoising_end
        if isinstance(start, float) and isinstance(end, float) and 0 < start < 1 and 0 < end < 1 and start >= end:
            raise BlockInputError(f"Block {name!r}: denoising_start ({start}) must be smaller than denoising_end "
                                  f"({end}).", block=name, input_name="denoising_start")
        scheduler = components.scheduler
        device = execution_device(components)
        timesteps, n = retrieve_timesteps(scheduler, bs.num_inference_steps, device, bs.timesteps, bs.sigmas)
        timesteps, n = img2img_timesteps(scheduler, n, strength, denoising_start=start)
        timesteps, n = denoising_end_timesteps(scheduler, timesteps, n, end)
        if n < 1:
            raise BlockInputError(f"Block {name!r}: strength={strength} with num_inference_steps="
                                  f"{bs.num_inference_steps} leaves {n} steps; raise either.",
                                  block=name, input_name="strength")
        bs.timesteps, bs.num_inference_steps = timesteps, n
        bs.latent_timestep = timesteps[:1].repeat(bs.batch_size * int(bs.num_images_per_prompt or 1))
        self.set_block_state(state, bs)
        return components, state


class InpaintSetTimestepsStep(Img2ImgSetTimestepsStep):
    default_strength = 1.0


# -- latents -------------------------------------------------------------------------------------------------------
class PrepareLatentsStep(ModularPipelineBlocks):
    model_name = "stable-diffusion"

    @property
    def description(self) -> str:
        return "Initial noise latents for text-to-image (or the user's `latents`), scaled by init_noise_sigma"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("scheduler", EulerDiscreteScheduler), ComponentSpec("vae", AutoencoderKL),
                ComponentSpec("unet", UNet2DConditionModel)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("height", type_hint=int), InputParam("width", type_hint=int),
                InputParam("latents", type_hint=torch.Tensor),
                InputParam("num_images_per_prompt", type_hint=int, default=1), InputParam("generator"),
                InputParam("batch_size", type_hint=int, required=True), InputParam("dtype", type_hint=torch.dtype)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("latents", type_hint=torch.Tensor, description="initial latents to denoise")]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        name = type(self).__name__
        factor = vae_scale_factor(components)
        height, width = default_size(components, bs.height, bs.width)
        check_size(name, height, width, factor)
        total = bs.batch_size * int(bs.num_images_per_prompt or 1)
        check_generators(name, bs.generator, total)
        vae = _optional(components, "vae")
        channels = vae.config.latent_channels if vae is not None else components.unet.config.in_channels
        shape = (total, channels, height // factor, width // factor)
        device = execution_device(components)
        dtype = bs.dtype or torch.float32
        if bs.latents is None:
            latents = randn_tensor(shape, generator=bs.generator, device=device, dtype=dtype)
        else:
            if tuple(bs.latents.shape) != shape:
                raise BlockInputError(f"Block {name!r}: input 'latents' has shape {tuple(bs.latents.shape)}, "
                                      f"expected {shape}.", block=name, input_name="latents")
            latents = bs.latents.to(device)
        bs.latents = latents * components.scheduler.init_noise_sigma
        self.set_block_state(state, bs)
        return components, state


class VaeEncoderStep(ModularPipelineBlocks):
    """Encode the init image for image-to-image (one generator per image when a list is given)."""

    model_name = "stable-diffusion"

    @property
    def description(self) -> str:
        return "VAE-encode `image` into scaled `image_latents` for image-to-image"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("vae", AutoencoderKL), image_processor_spec()]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("image", required=True, description="init image (PIL, numpy, tensor or list)"),
                InputParam("height", type_hint=int), InputParam("width", type_hint=int),
                InputParam("generator"), InputParam("dtype", type_hint=torch.dtype)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("image_latents", type_hint=torch.Tensor)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        name = type(self).__name__
        check_image(name, "image", bs.image)
        vae = components.vae
        device = execution_device(components)
        dtype = bs.dtype or vae.dtype
        image = components.image_processor.preprocess(bs.image, height=bs.height, width=bs.width)
        image = image.to(device=device, dtype=dtype)
        if image.shape[1] == vae.config.latent_channels:
            bs.image_latents = image
        else:
            gen = bs.generator
            if isinstance(gen, list) and image.shape[0] < len(gen):
                image = repeat_to_batch(name, "image", image, len(gen))
            upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
            vae_dtype = vae.dtype
            if upcast:
                image = image.float()
                vae.to(dtype=torch.float32)
            latents = retrieve_latents(vae, image, gen)
            if upcast:
                vae.to(dtype=vae_dtype)
            bs.image_latents = scale_latents(vae, latents.to(dtype))
        self.set_block_state(state, bs)
        return components, state


class Img2ImgPrepareLatentsStep(ModularPipelineBlocks):
    model_name = "stable-diffusion"

    @property
    def description(self) -> str:
        return ("Image-to-image latents: the image latents repeated to the batch and noised to the first timestep "
                "(not noised when `denoising_start` is set, SDXL refiner style)")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("scheduler", EulerDiscreteScheduler)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("latents", type_hint=torch.Tensor),
                InputParam("num_images_per_prompt", type_hint=int, default=1),
                InputParam("denoising_start", type_hint=float), InputParam("generator"),
                InputParam("latent_timestep", type_hint=torch.Tensor, required=True),
                InputParam("image_latents", type_hint=torch.Tensor, required=True),
                InputParam("batch_size", type_hint=int, required=True), InputParam("dtype", type_hint=torch.dtype)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("latents", type_hint=torch.Tensor)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        if bs.latents is None:
            name = type(self).__name__
            total = bs.batch_size * int(bs.num_images_per_prompt or 1)
            latents = repeat_to_batch(name, "image", bs.image_latents, total)
            if bs.denoising_start is None:
                noise = randn_tensor(latents.shape, generator=bs.generator, device=latents.device,
                                     dtype=latents.dtype)
                latents = components.scheduler.add_noise(latents, noise, bs.latent_timestep)
            bs.latents = latents
        self.set_block_state(state, bs)
        return components, state


class InpaintVaeEncoderStep(ModularPipelineBlocks):
    """Preprocess the image and mask for inpainting (the VAE encodes in prepare_latents, in the standard order)."""

    model_name = "stable-diffusion"

    @property
    def description(self) -> str:
        return ("Inpainting input: preprocess `image` and `mask_image` (optionally cropped around the mask with "
                "`padding_mask_crop`); outputs the pixel image, the mask and the masked image")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [image_processor_spec(), mask_processor_spec(), ComponentSpec("unet", UNet2DConditionModel),
                ComponentSpec("vae", AutoencoderKL)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("image", required=True), InputParam("mask_image", required=True),
                InputParam("masked_image_latents", type_hint=torch.Tensor),
                InputParam("height", type_hint=int), InputParam("width", type_hint=int),
                InputParam("padding_mask_crop", type_hint=int)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("init_image", type_hint=torch.Tensor), OutputParam("mask_condition", type_hint=torch.Tensor),
                OutputParam("masked_image", type_hint=torch.Tensor), OutputParam("crops_coords"),
                OutputParam("height", type_hint=int), OutputParam("width", type_hint=int)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        name = type(self).__name__
        check_image(name, "image", bs.image)
        check_image(name, "mask_image", bs.mask_image)
        image_sizes = {i.size for i in _as_list(bs.image) if isinstance(i, PIL.Image.Image)}
        mask_sizes = {m.size for m in _as_list(bs.mask_image) if isinstance(m, PIL.Image.Image)}
        if image_sizes and mask_sizes and image_sizes != mask_sizes:
            raise BlockInputError(f"Block {name!r}: mask_image size {sorted(mask_sizes)} differs from image size "
                                  f"{sorted(image_sizes)} (width, height); give a mask of the image's size.",
                                  block=name, input_name="mask_image")
        height, width = default_size(components, bs.height, bs.width)
        check_size(name, height, width, vae_scale_factor(components))
        if bs.padding_mask_crop is not None:
            if not isinstance(bs.mask_image, PIL.Image.Image) or not isinstance(bs.image, PIL.Image.Image):
                raise BlockInputError(f"Block {name!r}: padding_mask_crop needs PIL `image` and `mask_image`.",
                                      block=name, input_name="padding_mask_crop")
            crops = components.mask_processor.get_crop_region(bs.mask_image, width, height, pad=bs.padding_mask_crop)
            resize_mode = "fill"
        else:
            crops, resize_mode = None, "default"
        init_image = components.image_processor.preprocess(bs.image, height=height, width=width,
                                                           crops_coords=crops, resize_mode=resize_mode)
        bs.init_image = init_image.to(dtype=torch.float32)
        bs.mask_condition = components.mask_processor.preprocess(bs.mask_image, height=height, width=width,
                                                                 resize_mode=resize_mode, crops_coords=crops)
        if bs.mask_condition.shape[-2:] != bs.init_image.shape[-2:]:
            raise BlockInputError(f"Block {name!r}: mask_image size {tuple(bs.mask_condition.shape[-2:])} does not "
                                  f"match image size {tuple(bs.init_image.shape[-2:])}.", block=name,
                                  input_name="mask_image")
        if bs.masked_image_latents is None:
            bs.masked_image = bs.init_image * (bs.mask_condition < 0.5)
        else:
            bs.masked_image = bs.masked_image_latents
        bs.crops_coords = crops
        bs.height, bs.width = height, width
        self.set_block_state(state, bs)
        return components, state


class InpaintPrepareLatentsStep(ModularPipelineBlocks):
    """Noise (or image + noise) latents, the latent-size mask and the masked-image latents for inpainting."""

    model_name = "stable-diffusion"

    @property
    def description(self) -> str:
        return ("Inpainting latents: encodes the image when needed, draws the noise, and prepares `mask` and "
                "`masked_image_latents` (used by 9-channel UNets)")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("scheduler", EulerDiscreteScheduler), ComponentSpec("vae", AutoencoderKL),
                ComponentSpec("unet", UNet2DConditionModel)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("latents", type_hint=torch.Tensor),
                InputParam("num_images_per_prompt", type_hint=int, default=1), InputParam("generator"),
                InputParam("strength", type_hint=float, default=1.0),
                InputParam("denoising_start", type_hint=float),
                InputParam("init_image", type_hint=torch.Tensor, required=True),
                InputParam("mask_condition", type_hint=torch.Tensor, required=True),
                InputParam("masked_image", type_hint=torch.Tensor, required=True),
                InputParam("height", type_hint=int, required=True), InputParam("width", type_hint=int, required=True),
                InputParam("latent_timestep", type_hint=torch.Tensor, required=True),
                InputParam("batch_size", type_hint=int, required=True), InputParam("dtype", type_hint=torch.dtype)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("latents", type_hint=torch.Tensor), OutputParam("noise", type_hint=torch.Tensor),
                OutputParam("image_latents", type_hint=torch.Tensor), OutputParam("mask", type_hint=torch.Tensor),
                OutputParam("masked_image_latents", type_hint=torch.Tensor)]

    def _encode(self, vae, image: torch.Tensor, generator: Any) -> torch.Tensor:
        if image.shape[1] == vae.config.latent_channels:
            return image
        return scale_latents(vae, retrieve_latents(vae, image, generator))

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        name = type(self).__name__
        vae, unet, scheduler = components.vae, components.unet, components.scheduler
        device = execution_device(components)
        dtype = bs.dtype or torch.float32
        factor = vae_scale_factor(components)
        total = bs.batch_size * int(bs.num_images_per_prompt or 1)
        check_generators(name, bs.generator, total)
        channels = vae.config.latent_channels
        unet_channels = unet.config.in_channels
        if unet_channels not in (channels, 2 * channels + 1):
            raise BlockInputError(f"Block {name!r}: the UNet has {unet_channels} input channels; inpainting needs "
                                  f"{channels} or {2 * channels + 1}.", block=name, input_name="unet")
        shape = (total, channels, bs.height // factor, bs.width // factor)
        strength_max = float(bs.strength) == 1.0
        # SDXL refiner-style: continue from the image latents without adding noise
        add_noise = not (isinstance(bs.denoising_start, float) and 0 < bs.denoising_start < 1)
        image_latents = None
        if unet_channels == channels or (bs.latents is None and (not strength_max or not add_noise)):
            image = bs.init_image.to(device=device, dtype=dtype)
            image_latents = self._encode(vae, image, bs.generator)
            image_latents = image_latents.repeat(total // image_latents.shape[0], 1, 1, 1)
        if not add_noise and bs.latents is None:
            noise = randn_tensor(shape, generator=bs.generator, device=device, dtype=dtype)
            latents = image_latents
        elif bs.latents is None:
            noise = randn_tensor(shape, generator=bs.generator, device=device, dtype=dtype)
            if strength_max:
                latents = noise * scheduler.init_noise_sigma
            else:
                latents = scheduler.add_noise(image_latents, noise, bs.latent_timestep)
        else:
            noise = bs.latents.to(device)
            latents = noise * scheduler.init_noise_sigma
        mask = torch.nn.functional.interpolate(bs.mask_condition, size=(bs.height // factor, bs.width // factor))
        mask = mask.to(device=device, dtype=dtype)
        masked = self._encode(vae, bs.masked_image.to(device=device, dtype=dtype), bs.generator)
        bs.mask = repeat_to_batch(name, "mask_image", mask, total)
        bs.masked_image_latents = repeat_to_batch(name, "image", masked, total).to(device=device, dtype=dtype)
        bs.latents, bs.noise, bs.image_latents = latents, noise, image_latents
        self.set_block_state(state, bs)
        return components, state


# -- the denoise loop ----------------------------------------------------------------------------------------------
class LoopBeforeDenoiser(ModularPipelineBlocks):
    model_name = "stable-diffusion"

    @property
    def description(self) -> str:
        return "Loop step: scale the latents for the scheduler (`scaled_latents`)"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("scheduler", EulerDiscreteScheduler)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("latents", type_hint=torch.Tensor, required=True)]

    def __call__(self, components, block_state, i: int, t: torch.Tensor):
        block_state.scaled_latents = components.scheduler.scale_model_input(block_state.latents, t)
        return components, block_state


class InpaintLoopBeforeDenoiser(LoopBeforeDenoiser):
    @property
    def description(self) -> str:
        return "Loop step: scale the latents; for 9-channel UNets append the mask and masked-image latents"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("scheduler", EulerDiscreteScheduler), ComponentSpec("unet", UNet2DConditionModel)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("latents", type_hint=torch.Tensor, required=True),
                InputParam("mask", type_hint=torch.Tensor, required=True),
                InputParam("masked_image_latents", type_hint=torch.Tensor)]

    def __call__(self, components, block_state, i: int, t: torch.Tensor):
        scaled = components.scheduler.scale_model_input(block_state.latents, t)
        if components.unet.config.in_channels != scaled.shape[1]:
            scaled = torch.cat([scaled, block_state.mask, block_state.masked_image_latents], dim=1)
        block_state.scaled_latents = scaled
        return components, block_state


class LoopDenoiser(ModularPipelineBlocks):
    """Runs the UNet on the guider's passes (cond and uncond batched in one call) and combines them."""

    model_name = "stable-diffusion"
    default_guidance_scale = 7.5
    # UNet keyword -> (conditional, unconditional) state names; SDXL adds text_embeds / time_ids
    guider_input_fields: dict[str, tuple[str, str]] = {
        "encoder_hidden_states": ("prompt_embeds", "negative_prompt_embeds"),
    }
    _added_cond_keys = ("text_embeds", "time_ids")

    @property
    def description(self) -> str:
        return "Loop step: UNet prediction for each guidance pass, combined by the guider into `noise_pred`"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [guider_spec(self.default_guidance_scale), ComponentSpec("unet", UNet2DConditionModel)]

    @property
    def inputs(self) -> list[InputParam]:
        params = [InputParam("cross_attention_kwargs", type_hint=dict), InputParam("timestep_cond")]
        for cond, uncond in self.guider_input_fields.values():
            params += [InputParam(cond, type_hint=torch.Tensor, required=True),
                       InputParam(uncond, type_hint=torch.Tensor)]
        return params

    def static_fields(self, block_state) -> dict[str, Any]:
        """The per-call (cond, uncond) inputs, built once per loop."""
        fields = block_state.__dict__.get("_guider_fields")
        if fields is None:
            fields = {key: (getattr(block_state, c), getattr(block_state, u))
                      for key, (c, u) in self.guider_input_fields.items()}
            block_state.__dict__["_guider_fields"] = fields
        return fields

    def unet_kwargs(self, group) -> tuple[torch.Tensor, dict[str, Any]]:
        values = group.as_dict()
        sample = values.pop("sample")
        added = {k: values.pop(k) for k in self._added_cond_keys if k in values}
        if added:
            values["added_cond_kwargs"] = added
        return sample, values

    def predict(self, components, block_state, group, t, sample, kwargs) -> torch.Tensor:
        return components.unet(sample, t, timestep_cond=block_state.timestep_cond,
                               cross_attention_kwargs=block_state.cross_attention_kwargs,
                               return_dict=False, **kwargs)[0]

    def __call__(self, components, block_state, i: int, t: torch.Tensor):
        guider = block_state["guider"] or components.guider
        # the guider's start/stop windows count model evaluations: len(timesteps) (PNDM/Heun have more than steps)
        timesteps = block_state["timesteps"]
        n = len(timesteps) if timesteps is not None else block_state.num_inference_steps
        guider.set_state(step=i, num_inference_steps=n, timestep=t)
        fields = {"sample": block_state.scaled_latents, **self.static_fields(block_state)}
        preds: dict[str, torch.Tensor] = {}
        unet = components.unet
        for group in guider.prepare_passes(fields, batched=True):
            sample, kwargs = self.unet_kwargs(group)
            with guider.perturbation(unet, group):
                out = self.predict(components, block_state, group, t, sample, kwargs)
            preds.update(group.split(out))
        block_state.noise_pred = guider.combine(preds).pred
        return components, block_state


class ControlNetLoopDenoiser(LoopDenoiser):
    """LoopDenoiser with ControlNet residuals (one or several ControlNets, scheduled by controlnet_keep)."""

    @property
    def description(self) -> str:
        return "Loop step: ControlNet residuals then the UNet, per guidance pass (guess mode: cond pass only)"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [guider_spec(self.default_guidance_scale), ComponentSpec("unet", UNet2DConditionModel),
                ComponentSpec("controlnet", ControlNetModel)]

    @property
    def inputs(self) -> list[InputParam]:
        return super().inputs + [
            InputParam("controlnet_cond", required=True), InputParam("conditioning_scale"),
            InputParam("guess_mode", type_hint=bool, default=False), InputParam("controlnet_keep", required=True)]

    def predict(self, components, block_state, group, t, sample, kwargs) -> torch.Tensor:
        i = block_state.__dict__["_step"]
        keep = block_state.controlnet_keep[i]
        nets = components.controlnet
        nets = list(nets) if isinstance(nets, (list, tuple)) else [nets]
        conds = block_state.controlnet_cond
        conds = conds if isinstance(conds, list) else [conds]
        scales = block_state.conditioning_scale
        scales = scales if isinstance(scales, list) else [scales] * len(nets)
        keeps = keep if isinstance(keep, list) else [keep] * len(nets)
        guess = bool(block_state.guess_mode)
        if guess and len(group.identifiers) > 1:
            # guess mode: ControlNet sees only the conditional batch; uncond residuals are zeros
            cond_index = group.identifiers.index("pred_cond") if "pred_cond" in group.identifiers else None
        else:
            cond_index = None
        sizes = group.sizes
        if cond_index is not None:
            start = sum(sizes[:cond_index])
            sl = slice(start, start + sizes[cond_index])
            c_sample, c_kwargs = sample[sl], {k: _slice(v, sl) for k, v in kwargs.items()}
        else:
            c_sample, c_kwargs = sample, kwargs
        down, mid = None, None
        for net, cond, scale, k in zip(nets, conds, scales, keeps):
            image = cond
            reps = c_sample.shape[0] // image.shape[0]
            if reps > 1:
                image = torch.cat([image] * reps)
            # a 9-channel inpainting UNet's input carries mask + masked-image latents after the latents;
            # the ControlNet sees the latents only (as the standard pipelines do)
            net_sample = c_sample[:, :net.config.in_channels] if c_sample.shape[1] > net.config.in_channels \
                else c_sample
            d, m = net(net_sample, t, encoder_hidden_states=c_kwargs["encoder_hidden_states"], controlnet_cond=image,
                       conditioning_scale=scale * k, guess_mode=guess,
                       added_cond_kwargs=c_kwargs.get("added_cond_kwargs"), return_dict=False)
            if down is None:
                down, mid = list(d), m
            else:
                down = [a + b for a, b in zip(down, d)]
                mid = mid + m
        if cond_index is not None:
            down = [_pad_passes(x, sizes, cond_index) for x in down]
            mid = _pad_passes(mid, sizes, cond_index)
        return components.unet(sample, t, timestep_cond=block_state.timestep_cond,
                               cross_attention_kwargs=block_state.cross_attention_kwargs,
                               down_block_additional_residuals=down, mid_block_additional_residual=mid,
                               return_dict=False, **kwargs)[0]

    def __call__(self, components, block_state, i: int, t: torch.Tensor):
        block_state.__dict__["_step"] = i
        return super().__call__(components, block_state, i, t)


def _slice(value: Any, sl: slice) -> Any:
    if isinstance(value, torch.Tensor):
        return value[sl]
    if isinstance(value, dict):
        return {k: _slice(v, sl) for k, v in value.items()}
    return value


def _pad_passes(x: torch.Tensor, sizes: list[int], index: int) -> torch.Tensor:
    parts = [x if j == index else torch.zeros((n, *x.shape[1:]), dtype=x.dtype, device=x.device)
             for j, n in enumerate(sizes)]
    return torch.cat(parts)


class LoopAfterDenoiser(ModularPipelineBlocks):
    model_name = "stable-diffusion"

    @property
    def description(self) -> str:
        return "Loop step: scheduler step from `noise_pred` to the next `latents`"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("scheduler", EulerDiscreteScheduler)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("eta", type_hint=float, default=0.0), InputParam("generator")]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("latents", type_hint=torch.Tensor, description="denoised latents")]

    @staticmethod
    def step_kwargs(components, block_state) -> dict[str, Any]:
        kwargs = block_state.__dict__.get("_step_kwargs")
        if kwargs is None:
            params = inspect.signature(components.scheduler.step).parameters
            kwargs = {}
            if "eta" in params:
                kwargs["eta"] = block_state.eta
            if "generator" in params:
                kwargs["generator"] = block_state.generator
            block_state.__dict__["_step_kwargs"] = kwargs
        return kwargs

    def __call__(self, components, block_state, i: int, t: torch.Tensor):
        dtype = block_state.latents.dtype
        latents = components.scheduler.step(block_state.noise_pred, t, block_state.latents,
                                            **self.step_kwargs(components, block_state), return_dict=False)[0]
        block_state.latents = latents if latents.dtype == dtype else latents.to(dtype)
        return components, block_state


class InpaintLoopAfterDenoiser(LoopAfterDenoiser):
    @property
    def description(self) -> str:
        return "Loop step: scheduler step; for 4-channel UNets keep the unmasked area from the noised image latents"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("scheduler", EulerDiscreteScheduler), ComponentSpec("unet", UNet2DConditionModel)]

    @property
    def inputs(self) -> list[InputParam]:
        return super().inputs + [InputParam("mask", type_hint=torch.Tensor, required=True),
                                 InputParam("noise", type_hint=torch.Tensor),
                                 InputParam("image_latents", type_hint=torch.Tensor),
                                 InputParam("timesteps", type_hint=torch.Tensor, required=True)]

    def __call__(self, components, block_state, i: int, t: torch.Tensor):
        components, block_state = super().__call__(components, block_state, i, t)
        if components.unet.config.in_channels == block_state.latents.shape[1]:
            proper = block_state.image_latents
            if i < len(block_state.timesteps) - 1:
                next_t = block_state.timesteps[i + 1]
                proper = components.scheduler.add_noise(proper, block_state.noise, torch.tensor([next_t]))
            mask = block_state.mask
            block_state.latents = (1 - mask) * proper + mask * block_state.latents
        return components, block_state


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int = 512, dtype: torch.dtype = torch.float32
                             ) -> torch.Tensor:
    """Sinusoidal embedding of the guidance scale (VDM / LCM): (len(w), embedding_dim)."""
    w = w * 1000.0
    half = embedding_dim // 2
    freq = torch.exp(torch.arange(half, dtype=dtype) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    emb = w.to(dtype)[:, None] * freq[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class DenoiseLoopWrapper(LoopSequentialPipelineBlocks):
    """Iterates the timesteps; the guider (with per-call overrides) is resolved once before the loop."""

    model_name = "stable-diffusion"
    default_guidance_scale = 7.5
    # subclasses give the three loop steps (before / denoiser / after) in `block_classes`
    block_names = ["before_denoiser", "denoiser", "after_denoiser"]

    @property
    def description(self) -> str:
        return "Denoise loop: runs before_denoiser -> denoiser -> after_denoiser for every timestep"

    @property
    def loop_expected_components(self) -> list[ComponentSpec]:
        return [guider_spec(self.default_guidance_scale), ComponentSpec("scheduler", EulerDiscreteScheduler),
                ComponentSpec("unet", UNet2DConditionModel)]

    @property
    def loop_inputs(self) -> list[InputParam]:
        return [InputParam("timesteps", type_hint=torch.Tensor, required=True),
                InputParam("num_inference_steps", type_hint=int, required=True),
                InputParam("callback_on_step_end",
                            description="callable(step, timestep, latents) -> new latents or None, after each step"),
                *guidance_inputs()]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        bs.guider = guider_for_call(components, bs.guidance_scale, bs.guidance_rescale)
        dim = getattr(components.unet.config, "time_cond_proj_dim", None)
        if dim is not None and bs["timestep_cond"] is None and "latents" in bs:
            # guidance-distilled UNets (LCM) take the guidance scale as an embedding
            # and run a single conditional pass, as the standard pipelines do
            scale = getattr(bs.guider, "guidance_scale", 1.0)
            w = torch.full((bs.latents.shape[0],), scale - 1.0)
            bs.timestep_cond = guidance_scale_embedding(w, dim).to(device=bs.latents.device, dtype=bs.latents.dtype)
            if hasattr(bs.guider, "guidance_scale"):
                bs.guider = bs.guider.with_overrides(guidance_scale=1.0)
        callback = bs.callback_on_step_end
        for i, t in enumerate(self.progress_bar(bs.timesteps)):
            components, bs = self.loop_step(components, bs, i=i, t=t)
            if callback is not None:
                new = callback(i, t, bs.latents)
                if new is not None:
                    bs.latents = new
        self.set_block_state(state, bs)
        return components, state


class DenoiseStep(DenoiseLoopWrapper):
    block_classes = [LoopBeforeDenoiser, LoopDenoiser, LoopAfterDenoiser]


class InpaintDenoiseStep(DenoiseLoopWrapper):
    block_classes = [InpaintLoopBeforeDenoiser, LoopDenoiser, InpaintLoopAfterDenoiser]

    @property
    def description(self) -> str:
        return "Inpainting denoise loop (mask-aware before/after steps)"


class ControlNetDenoiseStep(DenoiseLoopWrapper):
    block_classes = [LoopBeforeDenoiser, ControlNetLoopDenoiser, LoopAfterDenoiser]

    @property
    def description(self) -> str:
        return "ControlNet denoise loop"


class InpaintControlNetDenoiseStep(DenoiseLoopWrapper):
    block_classes = [InpaintLoopBeforeDenoiser, ControlNetLoopDenoiser, InpaintLoopAfterDenoiser]

    @property
    def description(self) -> str:
        return "Inpainting ControlNet denoise loop"


# -- ControlNet input ----------------------------------------------------------------------------------------------
class ControlNetInputStep(ModularPipelineBlocks):
    model_name = "stable-diffusion"

    @property
    def description(self) -> str:
        return ("ControlNet input: preprocess `control_image` (one per ControlNet), the per-step keep schedule from "
                "control_guidance_start/end, conditioning scales and guess mode")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("controlnet", ControlNetModel),
                image_processor_spec("control_image_processor", do_convert_rgb=True, do_normalize=False)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("control_image", required=True),
                InputParam("control_guidance_start", default=0.0), InputParam("control_guidance_end", default=1.0),
                InputParam("controlnet_conditioning_scale", default=1.0),
                InputParam("guess_mode", type_hint=bool, default=False),
                InputParam("num_images_per_prompt", type_hint=int, default=1),
                InputParam("latents", type_hint=torch.Tensor, required=True),
                InputParam("batch_size", type_hint=int, required=True),
                InputParam("timesteps", type_hint=torch.Tensor, required=True),
                InputParam("crops_coords")]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("controlnet_cond"), OutputParam("conditioning_scale"),
                OutputParam("guess_mode", type_hint=bool), OutputParam("controlnet_keep", type_hint=list)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        name = type(self).__name__
        nets = components.controlnet
        multi = isinstance(nets, (list, tuple))
        nets = list(nets) if multi else [nets]
        images = bs.control_image if multi else [bs.control_image]
        if len(images) != len(nets):
            raise BlockInputError(f"Block {name!r}: {len(nets)} ControlNets need as many control images, got "
                                  f"{len(images)}.", block=name, input_name="control_image")
        for image in images:
            check_image(name, "control_image", image)
        start, end = bs.control_guidance_start, bs.control_guidance_end
        if not isinstance(start, list) and isinstance(end, list):
            start = [start] * len(end)
        elif isinstance(start, list) and not isinstance(end, list):
            end = [end] * len(start)
        elif not isinstance(start, list):
            start, end = [start] * len(nets), [end] * len(nets)
        if len(start) != len(nets) or len(end) != len(nets):
            raise BlockInputError(f"Block {name!r}: control_guidance_start/end need one value per ControlNet "
                                  f"({len(nets)}).", block=name, input_name="control_guidance_start")
        for s, e in zip(start, end):
            if not 0.0 <= s < e <= 1.0:
                raise BlockInputError(f"Block {name!r}: need 0 <= control_guidance_start < control_guidance_end <= "
                                      f"1, got {s} and {e}.", block=name, input_name="control_guidance_start")
        scale = bs.controlnet_conditioning_scale
        if multi and not isinstance(scale, list):
            scale = [scale] * len(nets)
        factor = vae_scale_factor(components)
        height, width = bs.latents.shape[-2] * factor, bs.latents.shape[-1] * factor
        total = bs.batch_size * int(bs.num_images_per_prompt or 1)
        n = int(bs.num_images_per_prompt or 1)
        conds = []
        processor = components.control_image_processor
        for image in images:
            image = processor.preprocess(image, height=height, width=width, crops_coords=bs.crops_coords,
                                         resize_mode="fill" if bs.crops_coords is not None else "default")
            image = image.to(dtype=torch.float32)
            repeat_by = total if image.shape[0] == 1 else n
            image = image.repeat_interleave(repeat_by, dim=0)
            conds.append(image.to(device=bs.latents.device, dtype=bs.latents.dtype))
        nsteps = len(bs.timesteps)
        keep = []
        for i in range(nsteps):
            k = [1.0 - float(i / nsteps < s or (i + 1) / nsteps > e) for s, e in zip(start, end)]
            keep.append(k if multi else k[0])
        bs.controlnet_cond = conds if multi else conds[0]
        bs.conditioning_scale = scale
        global_pool = any(getattr(net.config, "global_pool_conditions", False) for net in nets)
        bs.guess_mode = bool(bs.guess_mode) or global_pool
        bs.controlnet_keep = keep
        self.set_block_state(state, bs)
        return components, state


# -- decode --------------------------------------------------------------------------------------------------------
class DecodeStep(ModularPipelineBlocks):
    model_name = "stable-diffusion"

    @property
    def description(self) -> str:
        return "Decode the latents with the VAE (upcast when its config asks) and postprocess to `output_type`"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("vae", AutoencoderKL), image_processor_spec()]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("output_type", type_hint=str, default="pil",
                           description="'pil', 'np', 'pt' or 'latent'"),
                InputParam("latents", type_hint=torch.Tensor, required=True)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("images", description="generated images (list of PIL, np array or tensor)")]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        latents = bs.latents
        if bs.output_type == "latent":
            bs.images = latents
        else:
            vae = components.vae
            dtype = vae.dtype
            upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
            if upcast:
                vae.to(dtype=torch.float32)
                latents = latents.float()
            else:
                latents = latents.to(dtype)
            image = vae.decode(unscale_latents(vae, latents), return_dict=False)[0]
            if upcast:
                vae.to(dtype=dtype)
            bs.images = components.image_processor.postprocess(image, output_type=bs.output_type)
        self.set_block_state(state, bs)
        return components, state


class InpaintDecodeStep(DecodeStep):
    """Decode, then paste the decoded crop back over the original image when `padding_mask_crop` was used."""

    @property
    def description(self) -> str:
        return "Decode; with padding_mask_crop, overlay the inpainted crop on the original image"

    @property
    def inputs(self) -> list[InputParam]:
        return super().inputs + [InputParam("image"), InputParam("mask_image"),
                                 InputParam("padding_mask_crop", type_hint=int), InputParam("crops_coords")]

    def __call__(self, components, state):
        components, state = super().__call__(components, state)
        bs = self.get_block_state(state)
        if bs.padding_mask_crop is not None and bs.output_type == "pil":
            images = state.get("images")
            state.set("images", [components.image_processor.apply_overlay(bs.mask_image, bs.image, i, bs.crops_coords)
                                 for i in images])
        return components, state



# -- auto steps (the SD presets use these; SDXL subclasses swap in its named steps) -------------------------------
class AutoVaeEncoderStep(AutoPipelineBlocks):
    block_classes = [InpaintVaeEncoderStep, VaeEncoderStep]
    block_names = ["inpaint", "img2img"]
    block_trigger_inputs = ["mask_image", "image"]

    @property
    def description(self) -> str:
        return ("VAE encoder: `mask_image` (with `image`) -> inpainting inputs; `image` -> image latents; "
                "skipped for text-to-image")


class AutoSetTimestepsStep(AutoPipelineBlocks):
    block_classes = [InpaintSetTimestepsStep, Img2ImgSetTimestepsStep, SetTimestepsStep]
    block_names = ["inpaint", "img2img", "text2img"]
    block_trigger_inputs = ["mask_image", "image", None]

    @property
    def description(self) -> str:
        inpaint, img2img = (cls.default_strength for cls in self.block_classes[:2])
        return (f"Timesteps: `mask_image` -> inpainting (strength {inpaint}), `image` -> img2img (strength "
                f"{img2img}), else text2img")


class AutoPrepareLatentsStep(AutoPipelineBlocks):
    block_classes = [InpaintPrepareLatentsStep, Img2ImgPrepareLatentsStep, PrepareLatentsStep]
    block_names = ["inpaint", "img2img", "text2img"]
    block_trigger_inputs = ["mask_image", "image_latents", None]

    @property
    def description(self) -> str:
        return "Latents: `mask_image` -> inpainting, `image_latents` -> img2img, else noise"


class AutoControlNetInputStep(AutoPipelineBlocks):
    block_classes = [ControlNetInputStep]
    block_names = ["controlnet"]
    block_trigger_inputs = ["control_image"]

    @property
    def description(self) -> str:
        return "ControlNet input: runs only when `control_image` is given"


class AutoControlNetDenoiseStep(AutoPipelineBlocks):
    block_classes = [InpaintControlNetDenoiseStep, ControlNetDenoiseStep]
    block_names = ["inpaint_controlnet_denoise", "controlnet_denoise"]
    block_trigger_inputs = ["mask", None]

    @property
    def description(self) -> str:
        return "ControlNet denoise: `mask` -> inpainting ControlNet loop, else the ControlNet loop"


class AutoDenoiseStep(AutoPipelineBlocks):
    block_classes = [AutoControlNetDenoiseStep, InpaintDenoiseStep, DenoiseStep]
    block_names = ["controlnet_denoise", "inpaint_denoise", "denoise"]
    block_trigger_inputs = ["controlnet_cond", "mask", None]

    @property
    def description(self) -> str:
        return "Denoise: `controlnet_cond` -> ControlNet loop, `mask` -> inpainting loop, else the plain loop"


class AutoDecodeStep(AutoPipelineBlocks):
    block_classes = [InpaintDecodeStep, DecodeStep]
    block_names = ["inpaint_decode", "decode"]
    block_trigger_inputs = ["padding_mask_crop", None]

    @property
    def description(self) -> str:
        return "Decode: with `padding_mask_crop` the inpainted crop is pasted over the original image"


def standard_workflows(prefixes: dict[str, dict[str, bool]]) -> dict[str, dict[str, bool]]:
    """`workflow_map` of an auto preset: text2image / image2image / inpainting, each also under every prefix
    (e.g. `controlnet_inpainting`) with the prefix's extra trigger inputs."""
    base = {"text2image": {"prompt": True}, "image2image": {"image": True, "prompt": True},
            "inpainting": {"mask_image": True, "image": True, "prompt": True}}
    out = dict(base)
    for prefix, extra in prefixes.items():
        for name, triggers in base.items():
            out[f"{prefix}_{name}"] = {**extra, **triggers}
    return out
