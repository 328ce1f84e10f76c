"""Flux decode: unpack the 2x2-patch tokens, undo the VAE latent normalisation, decode, postprocess."""

from __future__ import annotations

from typing import Any

import torch

from ...blocks import BlockInputError, InputParam, ModularPipelineBlocks, OutputParam
from ...components.models import AutoencoderKL
from ...components.spec import ComponentSpec
from ..common.utils import image_processor_spec
from .utils import PROCESSOR_CONFIG, latent_size, resolve_size, unpack_latents

__all__ = ["FluxDecodeStep"]

_OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class FluxDecodeStep(ModularPipelineBlocks):
    model_name = "flux"

    @property
    def description(self) -> str:
        return ("Decode step: unpacks the latents to the 16-channel grid, applies latents / scaling_factor + "
                "shift_factor, decodes with the VAE and postprocesses to `output_type` ('latent' returns the "
                "packed latents).")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("vae", AutoencoderKL), image_processor_spec(**PROCESSOR_CONFIG)]

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam("output_type", type_hint=str, default="pil", description="'pil', 'np', 'pt' or 'latent'"),
            InputParam("latents", type_hint=torch.Tensor, required=True),
            InputParam("height", type_hint=int),
            InputParam("width", type_hint=int),
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("images", description="generated images: list of PIL images, np array or tensor")]

    def __call__(self, components: Any, state: Any):
        bs = self.get_block_state(state)
        name = type(self).__name__
        if bs.output_type not in _OUTPUT_TYPES:
            raise BlockInputError(f"Block {name!r}: input 'output_type' must be one of {_OUTPUT_TYPES}, got "
                                  f"{bs.output_type!r}.", block=name, input_name="output_type")
        if bs.output_type == "latent":
            bs.images = bs.latents
        else:
            vae = components.vae
            height, width = resolve_size(name, components, bs.height, bs.width)
            latents = unpack_latents(bs.latents, *latent_size(components, height, width))
            latents = latents / vae.config.scaling_factor + vae.config.shift_factor
            image = vae.decode(latents.to(device=vae.device, dtype=vae.dtype), return_dict=False)[0]
            bs.images = components.image_processor.postprocess(image, output_type=bs.output_type)
        self.set_block_state(state, bs)
        return components, state
