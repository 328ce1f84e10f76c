"""Flux block presets: text-to-image, image-to-image, inpainting, and the auto blocks that pick one."""

from __future__ import annotations

from ...blocks import AutoPipelineBlocks, InsertableDict, SequentialPipelineBlocks
from .before_denoise import (
    FluxImg2ImgPrepareLatentsStep,
    FluxImg2ImgSetTimestepsStep,
    FluxInpaintPrepareLatentsStep,
    FluxPrepareLatentsStep,
    FluxRoPEInputsStep,
    FluxSetTimestepsStep,
    FluxTextInputStep,
)
from .decoders import FluxDecodeStep
from .denoise import FluxDenoiseStep, FluxImg2ImgDenoiseStep, FluxInpaintDenoiseStep
from .encoders import FluxInpaintVaeEncoderStep, FluxTextEncoderStep, FluxVaeEncoderStep

__all__ = [
    "AUTO_BLOCKS", "IMAGE2IMAGE_BLOCKS", "INPAINT_BLOCKS", "TEXT2IMAGE_BLOCKS", "FluxAutoBeforeDenoiseStep",
    "FluxAutoBlocks", "FluxAutoDenoiseStep", "FluxAutoVaeEncoderStep", "FluxBeforeDenoiseStep",
    "FluxCoreDenoiseStep", "FluxImg2ImgBeforeDenoiseStep", "FluxInpaintBeforeDenoiseStep",
]


class FluxAutoVaeEncoderStep(AutoPipelineBlocks):
    model_name = "flux"
    block_classes = [FluxInpaintVaeEncoderStep, FluxVaeEncoderStep]
    block_names = ["inpaint", "img2img"]
    block_trigger_inputs = ["mask_image", "image"]

    @property
    def description(self) -> str:
        return ("VAE encoder: inpainting (image latents + mask) when `mask_image` is given, image-to-image when "
                "`image` is given, skipped otherwise.")


class FluxBeforeDenoiseStep(SequentialPipelineBlocks):
    model_name = "flux"
    block_classes = [FluxPrepareLatentsStep, FluxSetTimestepsStep, FluxRoPEInputsStep]
    block_names = ["prepare_latents", "set_timesteps", "prepare_rope_inputs"]

    @property
    def description(self) -> str:
        return "Before denoise (text-to-image): noise latents, shifted timesteps, RoPE ids."


class FluxImg2ImgBeforeDenoiseStep(SequentialPipelineBlocks):
    model_name = "flux"
    block_classes = [FluxImg2ImgSetTimestepsStep, FluxImg2ImgPrepareLatentsStep, FluxRoPEInputsStep]
    block_names = ["set_timesteps", "prepare_latents", "prepare_rope_inputs"]

    @property
    def description(self) -> str:
        return "Before denoise (image-to-image): truncated timesteps, noised image latents, RoPE ids."


class FluxInpaintBeforeDenoiseStep(SequentialPipelineBlocks):
    model_name = "flux"
    block_classes = [FluxImg2ImgSetTimestepsStep, FluxInpaintPrepareLatentsStep, FluxRoPEInputsStep]
    block_names = ["set_timesteps", "prepare_latents", "prepare_rope_inputs"]

    @property
    def description(self) -> str:
        return "Before denoise (inpainting): truncated timesteps, noised image latents and packed mask, RoPE ids."


class FluxAutoBeforeDenoiseStep(AutoPipelineBlocks):
    model_name = "flux"
    block_classes = [FluxInpaintBeforeDenoiseStep, FluxImg2ImgBeforeDenoiseStep, FluxBeforeDenoiseStep]
    block_names = ["inpaint", "img2img", "text2image"]
    block_trigger_inputs = ["processed_mask_image", "image_latents", None]

    @property
    def description(self) -> str:
        return ("Before denoise: inpainting when `processed_mask_image` is present, image-to-image when "
                "`image_latents` is, text-to-image otherwise.")


class FluxAutoDenoiseStep(AutoPipelineBlocks):
    model_name = "flux"
    block_classes = [FluxInpaintDenoiseStep, FluxImg2ImgDenoiseStep, FluxDenoiseStep]
    block_names = ["inpaint", "img2img", "denoise"]
    block_trigger_inputs = ["mask", "image_latents", None]

    @property
    def description(self) -> str:
        return ("Denoise loop: with the inpainting blend when `mask` is present; the image-to-image loop (default "
                "guidance_scale 7.0, as the standard pipelines) when `image_latents` is; text-to-image otherwise.")


class FluxCoreDenoiseStep(SequentialPipelineBlocks):
    model_name = "flux"
    block_classes = [FluxTextInputStep, FluxAutoBeforeDenoiseStep, FluxAutoDenoiseStep]
    block_names = ["input", "before_denoise", "denoise"]

    @property
    def description(self) -> str:
        return "Core denoise: batch expansion, the workflow's before-denoise steps, then the denoise loop."


AUTO_BLOCKS = InsertableDict([
    ("text_encoder", FluxTextEncoderStep),
    ("vae_encoder", FluxAutoVaeEncoderStep),
    ("denoise", FluxCoreDenoiseStep),
    ("decode", FluxDecodeStep),
])

TEXT2IMAGE_BLOCKS = InsertableDict([
    ("text_encoder", FluxTextEncoderStep),
    ("input", FluxTextInputStep),
    ("prepare_latents", FluxPrepareLatentsStep),
    ("set_timesteps", FluxSetTimestepsStep),
    ("prepare_rope_inputs", FluxRoPEInputsStep),
    ("denoise", FluxDenoiseStep),
    ("decode", FluxDecodeStep),
])

IMAGE2IMAGE_BLOCKS = InsertableDict([
    ("text_encoder", FluxTextEncoderStep),
    ("vae_encoder", FluxVaeEncoderStep),
    ("input", FluxTextInputStep),
    ("set_timesteps", FluxImg2ImgSetTimestepsStep),
    ("prepare_latents", FluxImg2ImgPrepareLatentsStep),
    ("prepare_rope_inputs", FluxRoPEInputsStep),
    ("denoise", FluxImg2ImgDenoiseStep),
    ("decode", FluxDecodeStep),
])

INPAINT_BLOCKS = InsertableDict([
    ("text_encoder", FluxTextEncoderStep),
    ("vae_encoder", FluxInpaintVaeEncoderStep),
    ("input", FluxTextInputStep),
    ("set_timesteps", FluxImg2ImgSetTimestepsStep),
    ("prepare_latents", FluxInpaintPrepareLatentsStep),
    ("prepare_rope_inputs", FluxRoPEInputsStep),
    ("denoise", FluxInpaintDenoiseStep),
    ("decode", FluxDecodeStep),
])


class FluxAutoBlocks(SequentialPipelineBlocks):
    """Text-to-image, image-to-image or inpainting with Flux, chosen from the inputs."""

    model_name = "flux"
    block_classes = list(AUTO_BLOCKS.values())
    block_names = list(AUTO_BLOCKS.keys())
    workflow_map = {
        "text2image": {"prompt": True},
        "image2image": {"image": True, "prompt": True},
        "inpainting": {"mask_image": True, "image": True, "prompt": True},
    }

    @property
    def description(self) -> str:
        return ("Auto blocks for Flux (FLUX.1-dev / schnell):\n"
                " - text-to-image by default (`prompt`),\n"
                " - image-to-image when `image` is given (with `strength`),\n"
                " - inpainting when `mask_image` and `image` are given.\n"
                "`guidance_scale` feeds the distilled guidance embedding; true CFG runs when `true_cfg_scale` > 1 "
                "and a `negative_prompt` is given.")
