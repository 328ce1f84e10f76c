"""Flux presets: FLUX.1 text-to-image, image-to-image and inpainting as blocks.

`FluxAutoBlocks` picks the workflow from the inputs (`mask_image` -> inpainting, `image` -> image-to-image,
otherwise text-to-image); `TEXT2IMAGE_BLOCKS`, `IMAGE2IMAGE_BLOCKS` and `INPAINT_BLOCKS` are the flat block
dicts of each workflow, for `SequentialPipelineBlocks.from_blocks_dict`.
"""

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
from .denoise import (
    FluxDenoiseStep,
    FluxImg2ImgDenoiseStep,
    FluxInpaintDenoiseStep,
    FluxInpaintLoopAfterDenoiser,
    FluxLoopAfterDenoiser,
    FluxLoopDenoiser,
)
from .encoders import FluxInpaintVaeEncoderStep, FluxTextEncoderStep, FluxVaeEncoderStep
from .modular_blocks import (
    AUTO_BLOCKS,
    IMAGE2IMAGE_BLOCKS,
    INPAINT_BLOCKS,
    TEXT2IMAGE_BLOCKS,
    FluxAutoBeforeDenoiseStep,
    FluxAutoBlocks,
    FluxAutoDenoiseStep,
    FluxAutoVaeEncoderStep,
    FluxBeforeDenoiseStep,
    FluxCoreDenoiseStep,
    FluxImg2ImgBeforeDenoiseStep,
    FluxInpaintBeforeDenoiseStep,
)

__all__ = [
    "AUTO_BLOCKS", "IMAGE2IMAGE_BLOCKS", "INPAINT_BLOCKS", "TEXT2IMAGE_BLOCKS",
    "FluxAutoBeforeDenoiseStep", "FluxAutoBlocks", "FluxAutoDenoiseStep", "FluxAutoVaeEncoderStep",
    "FluxBeforeDenoiseStep", "FluxCoreDenoiseStep", "FluxDecodeStep", "FluxDenoiseStep",
    "FluxImg2ImgBeforeDenoiseStep", "FluxImg2ImgDenoiseStep", "FluxImg2ImgPrepareLatentsStep",
    "FluxImg2ImgSetTimestepsStep",
    "FluxInpaintBeforeDenoiseStep", "FluxInpaintDenoiseStep", "FluxInpaintLoopAfterDenoiser",
    "FluxInpaintPrepareLatentsStep", "FluxInpaintVaeEncoderStep", "FluxLoopAfterDenoiser", "FluxLoopDenoiser",
    "FluxPrepareLatentsStep", "FluxRoPEInputsStep", "FluxSetTimestepsStep", "FluxTextEncoderStep",
    "FluxTextInputStep", "FluxVaeEncoderStep",
]
