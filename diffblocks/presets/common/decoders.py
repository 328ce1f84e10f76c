"""Shared SD/SDXL decode steps: VAE decode and the inpainting crop overlay.
"""

from __future__ import annotations

import torch

from ...blocks import (
    InputParam,
    ModularPipelineBlocks,
    OutputParam,
)
from ...components.models import AutoencoderKL
from ...components.spec import ComponentSpec
from .utils import (
    image_processor_spec,
    unscale_latents,
    vae_upcast,
)

__all__ = [
    "DecodeStep", "InpaintDecodeStep",
]


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
            with vae_upcast(vae):
                image = vae.decode(unscale_latents(vae, latents.to(vae.dtype)), return_dict=False)[0]
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
