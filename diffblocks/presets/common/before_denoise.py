"""Shared SD/SDXL steps between encoding and the denoise loop: batch expansion, timesteps, latents, ControlNet
inputs.
"""

from __future__ import annotations

from typing import Any

import torch

from ...blocks import (
    BlockInputError,
    InputParam,
    ModularPipelineBlocks,
    OutputParam,
    SequentialPipelineBlocks,
)
from ...components.models import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from ...components.schedulers import (
    EulerDiscreteScheduler,
    denoising_end_timesteps,
    img2img_timesteps,
    randn_tensor,
    retrieve_timesteps,
)
from ...components.spec import ComponentSpec
from .utils import (
    check_finite,
    check_generators,
    check_image,
    check_size,
    default_size,
    encode_posterior,
    execution_device,
    image_processor_spec,
    optional_component,
    repeat_to_batch,
    sample_posterior,
    scale_latents,
    vae_scale_factor,
)

# -- input normalisation -------------------------------------------------------------------------------------------
__all__ = [
    "ControlNetInputStep", "Img2ImgPrepareLatentsStep", "Img2ImgSetTimestepsStep", "InpaintImageVaeEncoderStep",
    "InpaintPrepareLatentsStep", "InpaintSampleLatentsStep",
    "InpaintSetTimestepsStep", "InputStep", "PrepareLatentsStep", "SetTimestepsStep",
]


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
        n = 1 if bs.num_images_per_prompt is None else int(bs.num_images_per_prompt)
        if n < 1:
            raise BlockInputError(f"Block {name!r}: input 'num_images_per_prompt' must be >= 1, got {n}.",
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
        total = bs.batch_size * int(bs.num_images_per_prompt or 1)
        check_size(name, height, width, factor, total, components)
        check_generators(name, bs.generator, total)
        check_finite(name, "latents", bs.latents)
        vae = optional_component(components, "vae")
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


def _inpaint_plan(block: str, components: Any, bs: Any) -> tuple[int, bool, bool, bool]:
    """(latent channels, strength == 1, add noise, whether the init image is VAE-encoded) for an inpainting call;
    refuses a UNet whose input channels fit neither 4- nor 9-channel inpainting."""
    channels = components.vae.config.latent_channels
    unet_channels = components.unet.config.in_channels
    if unet_channels not in (channels, 2 * channels + 1):
        raise BlockInputError(f"Block {block!r}: the UNet has {unet_channels} input channels; inpainting needs "
                              f"{channels} or {2 * channels + 1}.", block=block, input_name="unet")
    strength_max = float(bs.strength) == 1.0
    # SDXL refiner-style: continue from the image latents without adding noise
    add_noise = not (isinstance(bs.denoising_start, float) and 0 < bs.denoising_start < 1)
    encode_image = unet_channels == channels or (bs.latents is None and (not strength_max or not add_noise))
    return channels, strength_max, add_noise, encode_image


def _posterior_or_none(vae: Any, image: torch.Tensor) -> torch.Tensor | None:
    """The VAE posterior parameters of pixel images; None for images that already hold latents."""
    return None if image.shape[1] == vae.config.latent_channels else encode_posterior(vae, image)


class InpaintImageVaeEncoderStep(ModularPipelineBlocks):
    """The VAE posteriors of the init image (when the call needs its latents) and of the masked image."""

    model_name = "stable-diffusion"

    @property
    def description(self) -> str:
        return ("Inpainting VAE encode: `image_posterior` of the init image (when the call uses its latents) and "
                "`masked_image_posterior` (mean and log-variance). Takes no generator, so the block cache reuses "
                "it when only the seed changes")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("vae", AutoencoderKL), ComponentSpec("unet", UNet2DConditionModel)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("latents", type_hint=torch.Tensor),
                InputParam("strength", type_hint=float, default=1.0),
                InputParam("denoising_start", type_hint=float),
                InputParam("init_image", type_hint=torch.Tensor, required=True),
                InputParam("masked_image", type_hint=torch.Tensor, required=True),
                InputParam("dtype", type_hint=torch.dtype)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("image_posterior", type_hint=torch.Tensor,
                            description="VAE posterior parameters of the init image; None when not needed or when "
                                        "`image` holds latents"),
                OutputParam("masked_image_posterior", type_hint=torch.Tensor,
                            description="VAE posterior parameters of the masked image; None when it holds latents")]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        vae = components.vae
        device, dtype = execution_device(components), bs.dtype or torch.float32
        encode_image = _inpaint_plan(type(self).__name__, components, bs)[3]
        bs.image_posterior = (_posterior_or_none(vae, bs.init_image.to(device=device, dtype=dtype))
                              if encode_image else None)
        bs.masked_image_posterior = _posterior_or_none(vae, bs.masked_image.to(device=device, dtype=dtype))
        self.set_block_state(state, bs)
        return components, state


class InpaintSampleLatentsStep(ModularPipelineBlocks):
    """Noise (or image + noise) latents, the latent-size mask and the masked-image latents for inpainting."""

    model_name = "stable-diffusion"

    @property
    def description(self) -> str:
        return ("Inpainting latents: samples the image latents when needed, draws the noise, and prepares `mask` "
                "and `masked_image_latents` (used by 9-channel UNets), in the standard pipelines' generator order")

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
                InputParam("image_posterior", type_hint=torch.Tensor),
                InputParam("masked_image_posterior", type_hint=torch.Tensor),
                InputParam("height", type_hint=int, required=True), InputParam("width", type_hint=int, required=True),
                InputParam("latent_timestep", type_hint=torch.Tensor, required=True),
                InputParam("batch_size", type_hint=int, required=True), InputParam("dtype", type_hint=torch.dtype)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("latents", type_hint=torch.Tensor), OutputParam("noise", type_hint=torch.Tensor),
                OutputParam("image_latents", type_hint=torch.Tensor), OutputParam("mask", type_hint=torch.Tensor),
                OutputParam("masked_image_latents", type_hint=torch.Tensor)]

    @staticmethod
    def _sample(vae, posterior: torch.Tensor | None, image: torch.Tensor, generator: Any) -> torch.Tensor:
        if posterior is None:  # without the encode step: encode here; latents given as the image pass through
            posterior = _posterior_or_none(vae, image)
            if posterior is None:
                return image
        return scale_latents(vae, sample_posterior(posterior, generator))

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        name = type(self).__name__
        vae, scheduler = components.vae, components.scheduler
        device = execution_device(components)
        dtype = bs.dtype or torch.float32
        factor = vae_scale_factor(components)
        total = bs.batch_size * int(bs.num_images_per_prompt or 1)
        check_generators(name, bs.generator, total)
        channels, strength_max, add_noise, encode_image = _inpaint_plan(name, components, bs)
        shape = (total, channels, bs.height // factor, bs.width // factor)
        image_latents = None
        if encode_image:
            image = bs.init_image.to(device=device, dtype=dtype)
            image_latents = self._sample(vae, bs.image_posterior, image, bs.generator)
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
        masked = self._sample(vae, bs.masked_image_posterior, bs.masked_image.to(device=device, dtype=dtype),
                              bs.generator)
        bs.mask = repeat_to_batch(name, "mask_image", mask, total)
        bs.masked_image_latents = repeat_to_batch(name, "image", masked, total).to(device=device, dtype=dtype)
        bs.latents, bs.noise, bs.image_latents = latents, noise, image_latents
        self.set_block_state(state, bs)
        return components, state


class InpaintPrepareLatentsStep(SequentialPipelineBlocks):
    """Inpainting latents: the cacheable VAE encodes, then the seeded sampling and noise."""

    model_name = "stable-diffusion"
    block_classes = [InpaintImageVaeEncoderStep, InpaintSampleLatentsStep]
    block_names = ["encode", "sample"]

    @property
    def description(self) -> str:
        return ("Inpainting latents: `encode` computes the VAE posteriors of the image and the masked image "
                "(cached across calls when the block cache is on), `sample` draws the image latents and the noise "
                "and prepares `mask` and `masked_image_latents` (used by 9-channel UNets)")


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
