"""diffblocks: typed, reusable blocks for diffusion pipelines.

The public API lives here. Names are resolved lazily so `import diffblocks` stays cheap and the
block algebra can be used without loading any model code.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # block algebra
    "AutoPipelineBlocks": "diffblocks.blocks",
    "BlockGraphError": "diffblocks.blocks",
    "BlockInputError": "diffblocks.blocks",
    "BlockState": "diffblocks.blocks",
    "ComponentNotLoadedError": "diffblocks.blocks",
    "ConfigSpec": "diffblocks.blocks",
    "InputParam": "diffblocks.blocks",
    "InsertableDict": "diffblocks.blocks",
    "LoopSequentialPipelineBlocks": "diffblocks.blocks",
    "ModularPipelineBlocks": "diffblocks.blocks",
    "OutputParam": "diffblocks.blocks",
    "PipelineState": "diffblocks.blocks",
    "Problem": "diffblocks.blocks",
    "SequentialPipelineBlocks": "diffblocks.blocks",
    "Tracer": "diffblocks.blocks",
    # runtime
    "ModularPipeline": "diffblocks.runtime.pipeline",
    "ComponentLoadError": "diffblocks.runtime.pipeline",
    "TrustRemoteCodeError": "diffblocks.components.trust",
    "UnsafePathError": "diffblocks.components.trust",
    "set_size_limit": "diffblocks.runtime.limits",
    "get_size_limit": "diffblocks.runtime.limits",
    "generate_batch": "diffblocks.runtime.distributed",
    "image_seed": "diffblocks.runtime.distributed",
    "Interrupted": "diffblocks.runtime.execution",
    "ProgressEvent": "diffblocks.runtime.execution",
    "BlockCache": "diffblocks.runtime.cache",
    "PreviewCallback": "diffblocks.presets.previews",
    # the bundled trained demo model
    "demo_model_path": "diffblocks.assets",
    # components
    "ComponentSpec": "diffblocks.components.spec",
    "ComponentsManager": "diffblocks.components.manager",
    # models
    "UNet2DConditionModel": "diffblocks.components.models",
    "AutoencoderKL": "diffblocks.components.models",
    "ControlNetModel": "diffblocks.components.models",
    "FluxTransformer2DModel": "diffblocks.components.models",
    "ModelMixin": "diffblocks.components.modeling",
    "CheckpointError": "diffblocks.components.modeling",
    "AdapterFileError": "diffblocks.components.adapters",
    "load_state_dict": "diffblocks.components.state_dict",
    # schedulers
    "DDIMScheduler": "diffblocks.components.schedulers",
    "DDPMScheduler": "diffblocks.components.schedulers",
    "DPMSolverMultistepScheduler": "diffblocks.components.schedulers",
    "EulerAncestralDiscreteScheduler": "diffblocks.components.schedulers",
    "EulerDiscreteScheduler": "diffblocks.components.schedulers",
    "FlowMatchEulerDiscreteScheduler": "diffblocks.components.schedulers",
    "PNDMScheduler": "diffblocks.components.schedulers",
    "SchedulerMixin": "diffblocks.components.schedulers",
    "UniPCMultistepScheduler": "diffblocks.components.schedulers",
    "SchedulerOutput": "diffblocks.components.schedulers",
    # guiders
    "AdaptiveProjectedGuidance": "diffblocks.guiders",
    "AutoGuidance": "diffblocks.guiders",
    "BaseGuidance": "diffblocks.guiders",
    "ClassifierFreeGuidance": "diffblocks.guiders",
    "ClassifierFreeZeroStarGuidance": "diffblocks.guiders",
    "FrequencyDecoupledGuidance": "diffblocks.guiders",
    "GuiderOutput": "diffblocks.guiders",
    "LayerSkipConfig": "diffblocks.guiders",
    "PerturbedAttentionGuidance": "diffblocks.guiders",
    "SkipLayerGuidance": "diffblocks.guiders",
    "SmoothedEnergyGuidance": "diffblocks.guiders",
    "SmoothedEnergyGuidanceConfig": "diffblocks.guiders",
    "TangentialClassifierFreeGuidance": "diffblocks.guiders",
    # image processing
    "VaeImageProcessor": "diffblocks.components.image_processor",
    # configurable components
    "ConfigMixin": "diffblocks.components.config",
    # training
    "TrainingConfig": "diffblocks.training",
    "train_text2image": "diffblocks.training",
    "train_dreambooth": "diffblocks.training",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'diffblocks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
