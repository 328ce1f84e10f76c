"""The ComfyUI core nodes, implemented on our blocks (same class names, inputs, outputs and semantics).

| node                     | module       |
|--------------------------|--------------|
| CheckpointLoaderSimple   | loaders.py   |
| CLIPSetLastLayer         | loaders.py   |
| LoraLoader               | loaders.py   |
| CLIPTextEncode           | sampling.py  |
| EmptyLatentImage         | sampling.py  |
| KSampler                 | sampling.py  |
| KSamplerAdvanced         | sampling.py  |
| FluxGuidance             | sampling.py  |
| ControlNetLoader         | controlnet.py|
| ControlNetApplyAdvanced  | controlnet.py|
| VAEDecode, VAEEncode     | images.py    |
| VAEEncodeForInpaint      | images.py    |
| LoadImage, LoadImageMask | images.py    |
| SaveImage, PreviewImage  | images.py    |
"""

from __future__ import annotations

from .base import Node
from .controlnet import ControlNetApplyAdvanced, ControlNetLoader
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
    VAEDecode, VAEEncode, VAEEncodeForInpaint, LoadImage, LoadImageMask, SaveImage, PreviewImage, LoraLoader, FluxGuidance,
    ControlNetLoader, ControlNetApplyAdvanced,
]
