"""The ComfyUI core nodes, implemented on our blocks (same class names, inputs, outputs and semantics).

| nodes                                                                                        | module          |
|----------------------------------------------------------------------------------------------|-----------------|
| CheckpointLoaderSimple, CLIPSetLastLayer, LoraLoader                                         | loaders.py      |
| CLIPTextEncode, EmptyLatentImage, KSampler, KSamplerAdvanced, FluxGuidance                   | sampling.py     |
| VAEDecode, VAEEncode, VAEEncodeForInpaint, LoadImage, LoadImageMask, SaveImage, PreviewImage | images.py       |
| ControlNetLoader, ControlNetApplyAdvanced                                                    | controlnet.py   |
| UNETLoader, DualCLIPLoader, VAELoader (Flux's separate files)                                | flux_loaders.py |
"""

from __future__ import annotations

from .base import Node
from .controlnet import ControlNetApplyAdvanced, ControlNetLoader
from .flux_loaders import DualCLIPLoader, UNETLoader, VAELoader
from .images import (
    LoadImage,
    LoadImageMask,
    PreviewImage,
    SaveImage,
    VAEDecode,
    VAEEncode,
    VAEEncodeForInpaint,
)
from .loaders import CheckpointLoaderSimple, CLIPSetLastLayer, LoraLoader
from .sampling import CLIPTextEncode, EmptyLatentImage, FluxGuidance, KSampler, KSamplerAdvanced

__all__ = ["CORE_NODES"]

CORE_NODES: list[type[Node]] = [
    CheckpointLoaderSimple, CLIPTextEncode, CLIPSetLastLayer, EmptyLatentImage, KSampler, KSamplerAdvanced,
    VAEDecode, VAEEncode, VAEEncodeForInpaint, LoadImage, LoadImageMask, SaveImage, PreviewImage, LoraLoader,
    FluxGuidance, ControlNetLoader, ControlNetApplyAdvanced, UNETLoader, DualCLIPLoader, VAELoader,
]
