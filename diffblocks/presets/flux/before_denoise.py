"""Flux steps between encoding and the denoise loop: batch expansion, latents, timesteps, RoPE ids.

The arithmetic and the order in which a seeded generator is consumed follow the standard Flux pipelines
(VAE sample of the image first, then the noise), so the presets reproduce their images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...blocks import BlockInputError, InputParam, ModularPipelineBlocks, OutputParam
from ...components.schedulers import (
    FlowMatchEulerDiscreteScheduler,
    calculate_shift,
    img2img_timesteps,
    randn_tensor,
    retrieve_timesteps,
)
from ...components.spec import ComponentSpec
from ..common.utils import check_generators, execution_device, repeat_to_batch
from .utils import image_ids, latent_channels, latent_size, pack_latents, resolve_size

__all__ = [
    "FluxImg2ImgPrepareLatentsStep", "FluxImg2ImgSetTimestepsStep", "FluxInpaintPrepareLatentsStep",
    "FluxPrepareLatentsStep", "FluxRoPEInputsStep", "FluxSetTimestepsStep", "FluxTextInputStep",
]


class FluxTextInputStep(ModularPipelineBlocks):
    """Batch size and dtype from the embeddings; each prompt's embeddings repeated num_images_per_prompt times."""

    model_name = "flux"

    @property
    def description(self) -> str:
        return ("Input step: batch_size and dtype from prompt_embeds; repeats every embedding "
                "num_images_per_prompt times (a single negative is shared by all prompts).")

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam("num_images_per_prompt", type_hint=int, default=1),
            InputParam("prompt_embeds", type_hint=torch.Tensor, required=True),
            InputParam("pooled_prompt_embeds", type_hint=torch.Tensor, required=True),
            InputParam("negative_prompt_embeds", type_hint=torch.Tensor),
            InputParam("negative_pooled_prompt_embeds", type_hint=torch.Tensor),
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [
            OutputParam("batch_size", int, "number of prompts; the model batch is batch_size x num_images_per_prompt"),
            OutputParam("dtype", torch.dtype, "dtype of the model inputs (that of prompt_embeds)"),
        ]

    def __call__(self, components: Any, state: Any):
        bs = self.get_block_state(state)
        name = type(self).__name__
        n = bs.num_images_per_prompt
        if n < 1:
            raise BlockInputError(f"Block {name!r}: input 'num_images_per_prompt' must be >= 1, got {n}.",
                                  block=name, input_name="num_images_per_prompt")
        batch = bs.prompt_embeds.shape[0]
        if bs.pooled_prompt_embeds.shape[0] != batch:
            raise BlockInputError(f"Block {name!r}: 'pooled_prompt_embeds' has batch {bs.pooled_prompt_embeds.shape[0]}"
                                  f" but 'prompt_embeds' has {batch}.", block=name, input_name="pooled_prompt_embeds")
        bs.batch_size, bs.dtype = batch, bs.prompt_embeds.dtype
        bs.prompt_embeds = bs.prompt_embeds.repeat_interleave(n, dim=0) if n > 1 else bs.prompt_embeds
        bs.pooled_prompt_embeds = bs.pooled_prompt_embeds.repeat_interleave(n, dim=0) if n > 1 \
            else bs.pooled_prompt_embeds
        for key in ("negative_prompt_embeds", "negative_pooled_prompt_embeds"):
            value = getattr(bs, key)
            if value is None:
                continue
            if value.shape[0] not in (1, batch):
                raise BlockInputError(f"Block {name!r}: {key!r} has batch {value.shape[0]}; expected 1 or {batch} "
                                      f"(one per prompt).", block=name, input_name=key)
            setattr(bs, key, value.repeat_interleave(batch * n // value.shape[0], dim=0))
        if bs.negative_prompt_embeds is not None and bs.negative_prompt_embeds.shape[1:] != bs.prompt_embeds.shape[1:]:
            raise BlockInputError(
                f"Block {name!r}: 'negative_prompt_embeds' of shape {tuple(bs.negative_prompt_embeds.shape)} does not "
                f"match 'prompt_embeds' {tuple(bs.prompt_embeds.shape)} (use the same max_sequence_length).",
                block=name, input_name="negative_prompt_embeds")
        self.set_block_state(state, bs)
        return components, state


class FluxPrepareLatentsStep(ModularPipelineBlocks):
    """Packed Gaussian noise for text-to-image (or the given packed `latents`)."""

    model_name = "flux"

    @property
    def description(self) -> str:
        return ("Prepare latents step (text-to-image): draws the initial noise of the 16-channel latent grid and "
                "packs it into 2x2-patch tokens; resolves height and width (default 1024 px).")

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam("height", type_hint=int),
            InputParam("width", type_hint=int),
            InputParam("latents", type_hint=torch.Tensor, description="packed initial latents (skip the noise draw)"),
            InputParam("num_images_per_prompt", type_hint=int, default=1),
            InputParam("generator", description="torch.Generator, or one per image"),
            InputParam("batch_size", type_hint=int, required=True),
            InputParam("dtype", type_hint=torch.dtype),
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("latents", torch.Tensor, "packed latents (batch, tokens, 64)")]

    def __call__(self, components: Any, state: Any):
        bs = self.get_block_state(state)
        name = type(self).__name__
        bs.height, bs.width = resolve_size(name, components, bs.height, bs.width)
        total = bs.batch_size * bs.num_images_per_prompt
        device, dtype = execution_device(components), bs.dtype or torch.float32
        if bs.latents is not None:
            bs.latents = bs.latents.to(device=device, dtype=dtype)
        else:
            check_generators(name, bs.generator, total)
            h, w = latent_size(components, bs.height, bs.width)
            noise = randn_tensor((total, latent_channels(components), h, w), generator=bs.generator,
                                 device=device, dtype=dtype)
            bs.latents = pack_latents(noise)
        self.set_block_state(state, bs)
        return components, state


def _flux_mu(scheduler: Any, image_seq_len: int) -> float:
    cfg = scheduler.config
    return calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                           cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))


def _flux_timesteps(scheduler: Any, num_inference_steps: int, sigmas: Any, image_seq_len: int,
                    device: torch.device) -> tuple[torch.Tensor, int]:
    if sigmas is None:
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
    return retrieve_timesteps(scheduler, num_inference_steps, device, sigmas=sigmas,
                              mu=_flux_mu(scheduler, image_seq_len))


def _timestep_inputs() -> list[InputParam]:
    return [
        InputParam("num_inference_steps", type_hint=int, default=28),
        InputParam("sigmas", type_hint="list | np.ndarray", description="custom sigmas (default linspace(1, 1/n, n), then shifted)"),
    ]


class FluxSetTimestepsStep(ModularPipelineBlocks):
    """Sigmas shifted by `mu`, which grows with the number of image tokens (dynamic shifting)."""

    model_name = "flux"

    @property
    def description(self) -> str:
        return ("Set timesteps step (text-to-image): linspace(1, 1/n, n) sigmas, time-shifted by mu computed from the "
                "image sequence length and the scheduler's base/max shift.")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("scheduler", FlowMatchEulerDiscreteScheduler)]

    @property
    def inputs(self) -> list[InputParam]:
        return [*_timestep_inputs(), InputParam("latents", type_hint=torch.Tensor, required=True)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("timesteps", torch.Tensor), OutputParam("num_inference_steps", int)]

    def __call__(self, components: Any, state: Any):
        bs = self.get_block_state(state)
        scheduler = components.scheduler
        bs.timesteps, bs.num_inference_steps = _flux_timesteps(
            scheduler, bs.num_inference_steps, bs.sigmas, bs.latents.shape[1], execution_device(components))
        scheduler.set_begin_index(0)
        self.set_block_state(state, bs)
        return components, state


class FluxImg2ImgSetTimestepsStep(ModularPipelineBlocks):
    """As text-to-image, then keeps the last `strength` fraction of the schedule."""

    model_name = "flux"

    @property
    def description(self) -> str:
        return ("Set timesteps step (image-to-image / inpainting): the shifted Flux schedule, truncated to the last "
                "`strength` fraction of the steps.")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("scheduler", FlowMatchEulerDiscreteScheduler)]

    @property
    def inputs(self) -> list[InputParam]:
        return [
            *_timestep_inputs(),
            InputParam("strength", type_hint=float, default=0.6,
                       description="how much to change the image: 0 keeps it, 1 starts from pure noise"),
            InputParam("height", type_hint=int),
            InputParam("width", type_hint=int),
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("timesteps", torch.Tensor), OutputParam("num_inference_steps", int)]

    def __call__(self, components: Any, state: Any):
        bs = self.get_block_state(state)
        name = type(self).__name__
        if not 0.0 <= bs.strength <= 1.0:
            raise BlockInputError(f"Block {name!r}: input 'strength' must be in [0, 1], got {bs.strength}.",
                                  block=name, input_name="strength")
        height, width = resolve_size(name, components, bs.height, bs.width)
        h, w = latent_size(components, height, width)
        scheduler = components.scheduler
        _, steps = _flux_timesteps(scheduler, bs.num_inference_steps, bs.sigmas, (h // 2) * (w // 2),
                                   execution_device(components))
        bs.timesteps, bs.num_inference_steps = img2img_timesteps(scheduler, steps, bs.strength,
                                                                 fractional_strength=True)
        if bs.num_inference_steps < 1:
            raise BlockInputError(
                f"Block {name!r}: strength={bs.strength} with num_inference_steps={steps} leaves "
                f"{bs.num_inference_steps} denoising steps; raise strength or num_inference_steps.",
                block=name, input_name="strength")
        self.set_block_state(state, bs)
        return components, state


def _img2img_inputs() -> list[InputParam]:
    return [
        InputParam("latents", type_hint=torch.Tensor, description="packed initial latents (skip the noise draw)"),
        InputParam("image_latents", type_hint=torch.Tensor, required=True),
        InputParam("timesteps", type_hint=torch.Tensor, required=True),
        InputParam("height", type_hint=int),
        InputParam("width", type_hint=int),
        InputParam("num_images_per_prompt", type_hint=int, default=1),
        InputParam("generator"),
        InputParam("batch_size", type_hint=int, required=True),
        InputParam("dtype", type_hint=torch.dtype),
    ]


class FluxImg2ImgPrepareLatentsStep(ModularPipelineBlocks):
    """Image latents noised to the first kept timestep: ``sigma * noise + (1 - sigma) * image_latents``."""

    model_name = "flux"

    @property
    def description(self) -> str:
        return ("Prepare latents step (image-to-image): tiles image_latents to the batch, draws noise and mixes it "
                "in at the first timestep (scheduler.scale_noise), then packs the result.")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("scheduler", FlowMatchEulerDiscreteScheduler)]

    @property
    def inputs(self) -> list[InputParam]:
        return _img2img_inputs()

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("latents", torch.Tensor, "packed latents (batch, tokens, 64)")]

    def _noised(self, components: Any, bs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(image latents tiled to the batch, noise, noised latents, batch) — all unpacked."""
        name = type(self).__name__
        bs.height, bs.width = resolve_size(name, components, bs.height, bs.width)
        total = bs.batch_size * bs.num_images_per_prompt
        device, dtype = execution_device(components), bs.dtype or torch.float32
        image_latents = repeat_to_batch(name, "image_latents", bs.image_latents.to(device=device, dtype=dtype), total)
        if bs.latents is not None:
            noise = bs.latents.to(device=device, dtype=dtype)
            return image_latents, noise, noise, total
        check_generators(name, bs.generator, total)
        noise = randn_tensor(image_latents.shape, generator=bs.generator, device=device, dtype=dtype)
        latent_timestep = bs.timesteps[:1].repeat(total)
        return image_latents, noise, components.scheduler.scale_noise(image_latents, latent_timestep, noise), total

    def __call__(self, components: Any, state: Any):
        bs = self.get_block_state(state)
        given = bs.latents is not None
        _, _, latents, _ = self._noised(components, bs)
        bs.latents = latents if given else pack_latents(latents)
        self.set_block_state(state, bs)
        return components, state


class FluxInpaintPrepareLatentsStep(FluxImg2ImgPrepareLatentsStep):
    """Img2img latents, plus what the loop needs to restore the unmasked area each step."""

    @property
    def description(self) -> str:
        return ("Prepare latents step (inpainting): the image-to-image latents, plus the packed noise, clean image "
                "latents and latent-resolution mask the denoise loop blends with after every step.")

    @property
    def inputs(self) -> list[InputParam]:
        return [*_img2img_inputs(), InputParam("processed_mask_image", type_hint=torch.Tensor, required=True)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [
            OutputParam("latents", torch.Tensor, "packed latents (batch, tokens, 64)"),
            OutputParam("initial_noise", torch.Tensor, "packed noise the unmasked area is re-noised with"),
            OutputParam("initial_latents", torch.Tensor, "packed clean image latents, tiled to the batch"),
            OutputParam("mask", torch.Tensor, "packed mask (1 = repaint), same shape as latents"),
        ]

    def __call__(self, components: Any, state: Any):
        bs = self.get_block_state(state)
        name = type(self).__name__
        image_latents, noise, latents, total = self._noised(components, bs)
        bs.latents = pack_latents(latents)
        bs.initial_noise = pack_latents(noise)
        bs.initial_latents = pack_latents(image_latents)
        h, w = image_latents.shape[-2:]
        mask = torch.nn.functional.interpolate(bs.processed_mask_image, size=(h, w))
        mask = repeat_to_batch(name, "mask_image", mask.to(device=latents.device, dtype=latents.dtype), total)
        bs.mask = pack_latents(mask.repeat(1, image_latents.shape[1], 1, 1))
        self.set_block_state(state, bs)
        return components, state


class FluxRoPEInputsStep(ModularPipelineBlocks):
    """Position ids for the 3-axis RoPE: zeros for text tokens, (0, row, col) for image tokens."""

    model_name = "flux"

    @property
    def description(self) -> str:
        return "RoPE inputs step: txt_ids (zeros) and img_ids ((0, row, col) per 2x2 latent patch), built once."

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam("height", type_hint=int),
            InputParam("width", type_hint=int),
            InputParam("prompt_embeds", type_hint=torch.Tensor, required=True),
            InputParam("dtype", type_hint=torch.dtype),
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("txt_ids", torch.Tensor, "(text tokens, 3)"),
                OutputParam("img_ids", torch.Tensor, "(image tokens, 3)")]

    def __call__(self, components: Any, state: Any):
        bs = self.get_block_state(state)
        height, width = resolve_size(type(self).__name__, components, bs.height, bs.width)
        device, dtype = bs.prompt_embeds.device, bs.dtype or bs.prompt_embeds.dtype
        bs.txt_ids = torch.zeros(bs.prompt_embeds.shape[1], 3, device=device, dtype=dtype)
        bs.img_ids = image_ids(*latent_size(components, height, width), device=device, dtype=dtype)
        self.set_block_state(state, bs)
        return components, state
