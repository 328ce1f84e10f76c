"""Training on the same components and blocks as inference: text-to-image fine-tuning, DreamBooth, LoRA.

`train_text2image(...)` / `train_dreambooth(...)` (or `train(TrainingConfig(...))`) run a whole workflow on
accelerate; `TEXT2IMAGE_TRAIN_BLOCKS` / `DREAMBOOTH_TRAIN_BLOCKS` (SD 1.x/2.x) and `SDXL_TEXT2IMAGE_TRAIN_BLOCKS` /
`SDXL_DREAMBOOTH_TRAIN_BLOCKS` are the per-step block graphs to edit (the model family picks the default).
Names resolve lazily, so the CLI can build its option parser without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["DREAMBOOTH_TRAIN_BLOCKS", "TEXT2IMAGE_TRAIN_BLOCKS", "AddNoiseStep", "DiffusionLossStep",
                     "ModelPredictionStep", "OptimizerStep", "PriorPreservationLossStep", "SampleNoiseStep",
                     "TargetStep", "TrainingStepBlocks"], "blocks"),
    **dict.fromkeys(["SDXL_DREAMBOOTH_TRAIN_BLOCKS", "SDXL_TEXT2IMAGE_TRAIN_BLOCKS", "StableDiffusionXLTimeIdsStep",
                     "StableDiffusionXLTrainingStepBlocks"], "sdxl"),
    **dict.fromkeys(["TrainingConfig", "TrainingConfigError", "TrainingDataError"], "config"),
    **dict.fromkeys(["EMAWeights"], "ema"),
    **dict.fromkeys(["compute_snr", "diffusion_loss", "min_snr_weights", "prior_preservation_loss",
                     "training_target"], "losses"),
    **dict.fromkeys(["LORA_WEIGHT_NAME", "save_lora_weights"], "lora"),
    **dict.fromkeys(["Trainer", "TrainingResult", "train", "train_dreambooth", "train_text2image"], "trainer"),
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'diffblocks.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
