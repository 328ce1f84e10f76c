"""Shared SD/SDXL auto steps (the SD presets use these; SDXL subclasses swap in its named steps) and the
standard workflow map.
"""

from __future__ import annotations

from ...blocks import (
    AutoPipelineBlocks,
)
from .before_denoise import (
    ControlNetInputStep,
    Img2ImgPrepareLatentsStep,
    Img2ImgSetTimestepsStep,
    InpaintPrepareLatentsStep,
    InpaintSetTimestepsStep,
    PrepareLatentsStep,
    SetTimestepsStep,
)
from .decoders import DecodeStep, InpaintDecodeStep
from .denoise import ControlNetDenoiseStep, DenoiseStep, InpaintControlNetDenoiseStep, InpaintDenoiseStep
from .encoders import InpaintVaeEncoderStep, VaeEncoderStep

__all__ = [
    "AutoControlNetDenoiseStep", "AutoControlNetInputStep", "AutoDecodeStep", "AutoDenoiseStep",
    "AutoPrepareLatentsStep", "AutoSetTimestepsStep", "AutoVaeEncoderStep", "standard_workflows",
]


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
