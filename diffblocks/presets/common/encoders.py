"""Shared SD/SDXL encoder steps: the VAE encoder for image-to-image and the inpainting image/mask preparation.
"""

from __future__ import annotations

import PIL.Image
import torch

from ...blocks import (
    BlockInputError,
    InputParam,
    ModularPipelineBlocks,
    OutputParam,
    SequentialPipelineBlocks,
)
from ...components.models import AutoencoderKL, UNet2DConditionModel
from ...components.spec import ComponentSpec
from .utils import (
    as_list,
    check_image,
    check_size,
    default_size,
    encode_posterior,
    execution_device,
    image_processor_spec,
    mask_processor_spec,
    repeat_to_batch,
    sample_posterior,
    scale_latents,
    vae_scale_factor,
    vae_upcast,
)

__all__ = [
    "ImageVaeEncoderStep", "InpaintVaeEncoderStep", "SampleImageLatentsStep", "VaeEncoderStep",
]


class ImageVaeEncoderStep(ModularPipelineBlocks):
    """Preprocess the init image and VAE-encode it to the posterior's parameters (deterministic: cacheable)."""

    model_name = "stable-diffusion"

    @property
    def description(self) -> str:
        return ("Preprocess `image` and VAE-encode it into `image_posterior` (mean and log-variance); an image that "
                "already holds latents passes through as `image_latents`. Takes no generator, so the block cache "
                "reuses it when only the seed changes")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("vae", AutoencoderKL), image_processor_spec()]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("image", required=True, description="init image (PIL, numpy, tensor or list)"),
                InputParam("height", type_hint=int), InputParam("width", type_hint=int),
                InputParam("dtype", type_hint=torch.dtype)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("image_posterior", type_hint=torch.Tensor,
                            description="VAE posterior parameters of the image, (N, 2 * latent channels, h, w); None "
                                        "when `image` already holds latents"),
                OutputParam("image_latents", type_hint=torch.Tensor,
                            description="the given latents when `image` holds latents, else None until sampled")]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        vae = components.vae
        check_image(type(self).__name__, "image", bs.image, channels=(3, vae.config.latent_channels))
        device = execution_device(components)
        dtype = bs.dtype or vae.dtype
        image = components.image_processor.preprocess(bs.image, height=bs.height, width=bs.width)
        image = image.to(device=device, dtype=dtype)
        if image.shape[1] == vae.config.latent_channels:
            bs.image_posterior, bs.image_latents = None, image
        else:
            with vae_upcast(vae) as upcast:
                bs.image_posterior = encode_posterior(vae, image.float() if upcast else image)
            bs.image_latents = None
        self.set_block_state(state, bs)
        return components, state


class SampleImageLatentsStep(ModularPipelineBlocks):
    """Draw the init image's latents from its VAE posterior with the generator and scale them."""

    model_name = "stable-diffusion"

    @property
    def description(self) -> str:
        return "Sample `image_posterior` with `generator` (one per image when a list is given) into scaled `image_latents`"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("vae", AutoencoderKL)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("image_posterior", type_hint=torch.Tensor),
                InputParam("image_latents", type_hint=torch.Tensor),
                InputParam("generator"), InputParam("dtype", type_hint=torch.dtype)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("image_latents", type_hint=torch.Tensor)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        if bs.image_posterior is not None:
            vae = components.vae
            posterior, gen = bs.image_posterior, bs.generator
            if isinstance(gen, list) and posterior.shape[0] < len(gen):
                posterior = repeat_to_batch(type(self).__name__, "image", posterior, len(gen))
            latents = sample_posterior(posterior, gen)
            bs.image_latents = scale_latents(vae, latents.to(bs.dtype or vae.dtype))
        elif bs.image_latents is None:
            name = type(self).__name__
            raise BlockInputError(f"Block {name!r}: needs `image_posterior` (from ImageVaeEncoderStep) or "
                                  "`image_latents`; neither was given.", block=name, input_name="image_posterior")
        self.set_block_state(state, bs)
        return components, state


class VaeEncoderStep(SequentialPipelineBlocks):
    """Encode the init image for image-to-image: the cacheable VAE encode, then the seeded sampling."""

    model_name = "stable-diffusion"
    block_classes = [ImageVaeEncoderStep, SampleImageLatentsStep]
    block_names = ["encode", "sample"]

    @property
    def description(self) -> str:
        return ("VAE-encode `image` into scaled `image_latents` for image-to-image: `encode` (preprocess + VAE "
                "posterior, cached across calls when the block cache is on) then `sample` (the generator's draw)")


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
        check_image(name, "image", bs.image, channels=(3,))
        check_image(name, "mask_image", bs.mask_image)
        image_sizes = {i.size for i in as_list(bs.image) if isinstance(i, PIL.Image.Image)}
        mask_sizes = {m.size for m in as_list(bs.mask_image) if isinstance(m, PIL.Image.Image)}
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
