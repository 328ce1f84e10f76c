"""Steps shared by the Stable Diffusion 1.x/2.x and SDXL presets, one module per pipeline stage.

Each step reproduces the arithmetic of the standard pipelines (including the order in which a seeded
generator is consumed), so a preset gives the same images as those pipelines for the same arguments.
Family-specific steps (text encoding, SDXL's added conditioning) live in `presets.sd` / `presets.sdxl`;
the helpers in `utils` serve every family (Flux included).

- `encoders`: VAE encoder (image-to-image) and the inpainting image/mask preparation
- `before_denoise`: batch expansion, timesteps, initial latents, ControlNet inputs
- `denoise`: the denoise loop steps and loop wrappers
- `decoders`: VAE decode
- `auto`: the auto steps that pick a workflow from the inputs
- `utils`: component lookups, size and batch checks, latent scaling, default component specs
"""

from .auto import (
    AutoControlNetDenoiseStep,
    AutoControlNetInputStep,
    AutoDecodeStep,
    AutoDenoiseStep,
    AutoPrepareLatentsStep,
    AutoSetTimestepsStep,
    AutoVaeEncoderStep,
    standard_workflows,
)
from .before_denoise import (
    ControlNetInputStep,
    Img2ImgPrepareLatentsStep,
    Img2ImgSetTimestepsStep,
    InpaintPrepareLatentsStep,
    InpaintSetTimestepsStep,
    InputStep,
    PrepareLatentsStep,
    SetTimestepsStep,
)
from .decoders import (
    DecodeStep,
    InpaintDecodeStep,
)
from .denoise import (
    ControlNetDenoiseStep,
    ControlNetLoopDenoiser,
    DenoiseLoopWrapper,
    DenoiseStep,
    InpaintControlNetDenoiseStep,
    InpaintDenoiseStep,
    InpaintLoopAfterDenoiser,
    InpaintLoopBeforeDenoiser,
    LoopAfterDenoiser,
    LoopBeforeDenoiser,
    LoopDenoiser,
    guidance_scale_embedding,
)
from .encoders import (
    InpaintVaeEncoderStep,
    VaeEncoderStep,
)
from .utils import (
    as_list,
    check_generators,
    check_image,
    check_size,
    default_size,
    execution_device,
    guidance_inputs,
    guider_for_call,
    guider_spec,
    image_processor_spec,
    latent_stats,
    mask_processor_spec,
    optional_component,
    repeat_to_batch,
    retrieve_latents,
    scale_latents,
    unscale_latents,
    vae_scale_factor,
)

__all__ = [
    "InpaintVaeEncoderStep", "VaeEncoderStep", "ControlNetInputStep", "Img2ImgPrepareLatentsStep",
    "Img2ImgSetTimestepsStep", "InpaintPrepareLatentsStep", "InpaintSetTimestepsStep", "InputStep",
    "PrepareLatentsStep", "SetTimestepsStep", "ControlNetDenoiseStep", "ControlNetLoopDenoiser",
    "DenoiseLoopWrapper", "DenoiseStep", "InpaintControlNetDenoiseStep", "InpaintDenoiseStep",
    "InpaintLoopAfterDenoiser", "InpaintLoopBeforeDenoiser", "LoopAfterDenoiser", "LoopBeforeDenoiser",
    "LoopDenoiser", "guidance_scale_embedding", "DecodeStep", "InpaintDecodeStep", "AutoControlNetDenoiseStep",
    "AutoControlNetInputStep", "AutoDecodeStep", "AutoDenoiseStep", "AutoPrepareLatentsStep",
    "AutoSetTimestepsStep", "AutoVaeEncoderStep", "standard_workflows", "as_list", "check_generators",
    "check_image", "check_size", "default_size", "execution_device", "guidance_inputs", "guider_for_call",
    "guider_spec", "image_processor_spec", "latent_stats", "mask_processor_spec", "optional_component",
    "repeat_to_batch", "retrieve_latents", "scale_latents", "unscale_latents", "vae_scale_factor",
]
