"""Guidance methods as swappable components (see `diffblocks.guiders.base` for the loop protocol)."""

from .base import BaseGuidance, GuidanceBatch, GuiderOutput, PassGroup, rescale_noise_cfg
from .cfg import (
    AdaptiveProjectedGuidance,
    ClassifierFreeGuidance,
    ClassifierFreeZeroStarGuidance,
    FrequencyDecoupledGuidance,
    MomentumBuffer,
    TangentialClassifierFreeGuidance,
)
from .hooks import (
    LayerSkipConfig,
    PerturbationHandle,
    SmoothedEnergyGuidanceConfig,
    apply_layer_skip,
    apply_smoothed_energy,
    default_layer_stack,
)
from .perturbed import AutoGuidance, PerturbedAttentionGuidance, SkipLayerGuidance, SmoothedEnergyGuidance

__all__ = [
    "AdaptiveProjectedGuidance",
    "AutoGuidance",
    "BaseGuidance",
    "ClassifierFreeGuidance",
    "ClassifierFreeZeroStarGuidance",
    "FrequencyDecoupledGuidance",
    "GuidanceBatch",
    "GuiderOutput",
    "LayerSkipConfig",
    "MomentumBuffer",
    "PassGroup",
    "PerturbationHandle",
    "PerturbedAttentionGuidance",
    "SkipLayerGuidance",
    "SmoothedEnergyGuidance",
    "SmoothedEnergyGuidanceConfig",
    "TangentialClassifierFreeGuidance",
    "apply_layer_skip",
    "apply_smoothed_energy",
    "default_layer_stack",
    "rescale_noise_cfg",
]
