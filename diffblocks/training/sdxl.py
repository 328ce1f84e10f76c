"""The SDXL training step as blocks: the SD step with SDXL's text encoding and micro-conditioning.

The text encoder block is the SDXL inference preset's own (penultimate hidden states of both CLIP encoders,
concatenated, and the pooled output of `text_encoder_2`); the VAE encoder is the shared one. The only new
block is `StableDiffusionXLTimeIdsStep`: per-example `add_time_ids` from the original image size and the crop
top-left the data pipeline recorded, plus the target size, as the diffusers SDXL training scripts compute them.
Noise, forward diffusion, prediction, target, loss and optimizer steps are the SD training blocks.
"""

from __future__ import annotations

import torch

from ..blocks import BlockInputError, InputParam, InsertableDict, ModularPipelineBlocks, OutputParam
from ..components.models import AutoencoderKL, UNet2DConditionModel
from ..components.spec import ComponentSpec
from ..presets.common import vae_scale_factor
from ..presets.sdxl import StableDiffusionXLTextEncoderStep, StableDiffusionXLVaeEncoderStep
from .blocks import TEXT2IMAGE_TRAIN_BLOCKS, PriorPreservationLossStep, TrainingStepBlocks

__all__ = [
    "SDXL_DREAMBOOTH_TRAIN_BLOCKS",
    "SDXL_TEXT2IMAGE_TRAIN_BLOCKS",
    "StableDiffusionXLTimeIdsStep",
    "StableDiffusionXLTrainingStepBlocks",
]


class StableDiffusionXLTimeIdsStep(ModularPipelineBlocks):
    """SDXL micro-conditioning for a training batch: one (original size, crop top-left, target size) row per
    example, and the UNet's `added_cond_kwargs` with the pooled text embeddings."""

    model_name = "stable-diffusion-xl"

    @property
    def description(self) -> str:
        return ("Per-example add_time_ids = original_size + crop_top_left + target_size (target: the training "
                "resolution) and added_cond_kwargs {text_embeds: pooled_prompt_embeds, time_ids}")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("unet", UNet2DConditionModel), ComponentSpec("vae", AutoencoderKL)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("original_sizes", type_hint=list, required=True,
                           description="(height, width) of each example before resizing"),
                InputParam("crop_top_lefts", type_hint=list, required=True,
                           description="(top, left) of each example's crop in the resized image"),
                InputParam("target_size", type_hint=tuple,
                           description="(height, width) trained at (default: the size of `image_latents` in pixels)"),
                InputParam("image_latents", type_hint=torch.Tensor, required=True),
                InputParam("pooled_prompt_embeds", type_hint=torch.Tensor, required=True)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("add_time_ids", type_hint=torch.Tensor),
                OutputParam("added_cond_kwargs", type_hint=dict, description="text_embeds and time_ids for the UNet")]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        name = type(self).__name__
        latents, pooled = bs.image_latents, bs.pooled_prompt_embeds
        batch = latents.shape[0]
        for key in ("original_sizes", "crop_top_lefts"):
            value = getattr(bs, key)
            if len(value) != batch or any(len(tuple(v)) != 2 for v in value):
                raise BlockInputError(f"Block {name!r}: input {key!r} needs one (height, width)-like pair per "
                                      f"example ({batch}), got {value!r}.", block=name, input_name=key)
        factor = vae_scale_factor(components)
        target = tuple(bs.target_size or (latents.shape[-2] * factor, latents.shape[-1] * factor))
        rows = [list(tuple(size) + tuple(crop) + target) for size, crop in zip(bs.original_sizes, bs.crop_top_lefts)]
        unet = components.unet
        expected = unet.config.projection_class_embeddings_input_dim
        passed = unet.config.addition_time_embed_dim * len(rows[0]) + int(pooled.shape[-1])
        if expected is not None and passed != expected:
            raise BlockInputError(f"Block {name!r}: the UNet's added conditioning takes {expected} inputs but "
                                  f"{len(rows[0])} time ids and {pooled.shape[-1]}-wide pooled embeddings give "
                                  f"{passed}; SDXL training needs a base (not refiner) SDXL UNet.", block=name,
                                  input_name="pooled_prompt_embeds")
        bs.add_time_ids = torch.tensor(rows, dtype=pooled.dtype, device=latents.device)
        bs.added_cond_kwargs = {"text_embeds": pooled, "time_ids": bs.add_time_ids}
        self.set_block_state(state, bs)
        return components, state


# the SD graph with SDXL's encoders and the time-id block before the noise is sampled
SDXL_TEXT2IMAGE_TRAIN_BLOCKS = InsertableDict([*TEXT2IMAGE_TRAIN_BLOCKS.items()])
SDXL_TEXT2IMAGE_TRAIN_BLOCKS["text_encoder"] = StableDiffusionXLTextEncoderStep
SDXL_TEXT2IMAGE_TRAIN_BLOCKS["vae_encoder"] = StableDiffusionXLVaeEncoderStep
SDXL_TEXT2IMAGE_TRAIN_BLOCKS.insert("time_ids", StableDiffusionXLTimeIdsStep, 2)

SDXL_DREAMBOOTH_TRAIN_BLOCKS = InsertableDict([*SDXL_TEXT2IMAGE_TRAIN_BLOCKS.items()])
SDXL_DREAMBOOTH_TRAIN_BLOCKS["loss"] = PriorPreservationLossStep


class StableDiffusionXLTrainingStepBlocks(TrainingStepBlocks):
    """One SDXL text-to-image training step: captions + images + crop records in, loss out, weights updated."""

    model_name = "stable-diffusion-xl"
    block_classes = list(SDXL_TEXT2IMAGE_TRAIN_BLOCKS.values())
    block_names = list(SDXL_TEXT2IMAGE_TRAIN_BLOCKS.keys())

    @property
    def description(self) -> str:
        return ("SDXL training step: encode captions with both text encoders and images with the VAE, add the "
                "time-id conditioning, noise the latents, predict, regress onto the target, step the optimizer")
