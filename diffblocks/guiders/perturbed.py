"""Guiders that run a perturbed model pass: PAG, SLG, SEG and AutoGuidance.

The perturbed pass uses the conditional inputs (AutoGuidance: the unconditional ones) and runs with
hooks from `hooks.py` installed. With no layers configured, the layers come from the model the first
time the guider sees it (`hooks.default_layer_stack`): the UNet mid block's transformer blocks, or the
middle block of a DiT's first stack.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch

from ..components.config import register_to_config
from .base import BaseGuidance, GuiderOutput, _Pass
from .hooks import (
    LayerSkipConfig,
    PerturbationHandle,
    SmoothedEnergyGuidanceConfig,
    apply_layer_skip,
    apply_smoothed_energy,
    default_layer_stack,
)

logger = logging.getLogger(__name__)

__all__ = ["AutoGuidance", "PerturbedAttentionGuidance", "SkipLayerGuidance", "SmoothedEnergyGuidance"]


def _as_configs(cls: type, name: str, layers: Any, config: Any, **layer_kwargs: Any) -> list | None:
    """Normalise ``layers`` / ``config`` (object, dict, or lists of them) to a list of `cls` or None."""
    if layers is not None and config is not None:
        raise ValueError(f"give either {name}_layers or {name}_config, not both.")
    if layers is not None:
        if isinstance(layers, int):
            layers = [layers]
        if not isinstance(layers, (list, tuple)) or not all(isinstance(i, int) for i in layers):
            raise ValueError(f"{name}_layers must be an int or a list of ints, got {layers!r}.")
        return [cls(indices=[i], fqn="auto", **layer_kwargs) for i in layers]
    if config is None:
        return None
    items = config if isinstance(config, (list, tuple)) else [config]
    out = []
    for item in items:
        if isinstance(item, dict):
            item = cls.from_dict(item)
        elif isinstance(item, cls):
            item = copy.copy(item)
        else:
            raise ValueError(f"{name}_config must be a {cls.__name__}, a dict or a list of them, got {type(item).__name__}.")
        out.append(item)
    return out


class _PerturbedGuidance(BaseGuidance):
    """CFG plus a perturbed conditional pass: ``base + s (c - u) + s_p (c - c_perturbed)``."""

    _input_predictions = ["pred_cond", "pred_uncond", "pred_cond_skip"]
    _perturbed_id = "pred_cond_skip"
    guidance_scale: float
    use_original_formulation: bool
    guidance_rescale: float

    # set by subclasses
    _p_scale: float
    _p_start: float
    _p_stop: float
    _configs: list | None

    def _cfg_active(self) -> bool:
        return (self._enabled and self._in_window(self._start, self._stop)
                and self._scale_active(self.guidance_scale, self.use_original_formulation))

    def _perturb_active(self) -> bool:
        # strict window, as the reference: int(start N) < step < int(stop N)
        return (self._enabled and self._in_window(self._p_start, self._p_stop, strict=True)
                and not math.isclose(self._p_scale, 0.0))

    def _plan(self) -> list[_Pass]:
        passes = [_Pass("pred_cond", 0)]
        if self._cfg_active():
            passes.append(_Pass("pred_uncond", 1))
        if self._perturb_active():
            passes.append(_Pass(self._perturbed_id, 0, perturbed=True))
        return passes

    @property
    def requires_unconditional(self) -> bool:
        return self._enabled and self._scale_active(self.guidance_scale, self.use_original_formulation)

    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None,
                **perturbed: torch.Tensor) -> GuiderOutput:
        pred_p = perturbed.get(self._perturbed_id)
        cfg, pert = self._cfg_active(), self._perturb_active()
        if cfg and pert:
            pred = (self._base(pred_cond, pred_uncond) + self.guidance_scale * (pred_cond - pred_uncond)
                    + self._p_scale * (pred_cond - pred_p))
        elif cfg:
            pred = self._base(pred_cond, pred_uncond) + self.guidance_scale * (pred_cond - pred_uncond)
        elif pert:
            pred = self._base(pred_cond, pred_p) + self._p_scale * (pred_cond - pred_p)
        else:
            pred = pred_cond
        return self._finish(pred, pred_cond, pred_uncond, self.guidance_rescale)

    def _base(self, pred_cond: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return pred_cond if self.use_original_formulation else other

    # -- layers ---------------------------------------------------------------------------------
    def _default_configs(self, model: torch.nn.Module) -> list:
        raise NotImplementedError

    def _perturbation_configs(self, model: torch.nn.Module) -> list:
        configs = self._resolved.get(model)
        if configs is None:
            configs = self._configs if self._configs is not None else self._default_configs(model)
            self._resolved[model] = configs
        return configs

    def _install(self, model: torch.nn.Module) -> PerturbationHandle:
        handle = PerturbationHandle()
        try:
            for config in self._perturbation_configs(model):
                handle.merge(self._apply(model, config))
        except BaseException:
            handle.remove()
            raise
        return handle

    def _apply(self, model: torch.nn.Module, config: Any) -> PerturbationHandle:
        return apply_layer_skip(model, config)


def _default_indices(model: torch.nn.Module, owner: str) -> tuple[str, list[int]]:
    fqn, count = default_layer_stack(model)
    indices = list(range(count)) if fqn.startswith("mid_block") else [count // 2]
    logger.info("%s: no layers configured; perturbing %s blocks %s of %s", owner, fqn, indices,
                type(model).__name__)
    return fqn, indices


class PerturbedAttentionGuidance(_PerturbedGuidance):
    """PAG (arXiv 2403.17377): the perturbed pass replaces self-attention scores by the identity.

    Default layers: the UNet mid block's transformer blocks / a DiT's middle block.
    """

    @register_to_config
    def __init__(self, guidance_scale: float = 7.5, perturbed_guidance_scale: float = 2.8,
                 perturbed_guidance_start: float = 0.01, perturbed_guidance_stop: float = 0.2,
                 perturbed_guidance_layers: int | list[int] | None = None,
                 perturbed_guidance_config: LayerSkipConfig | list[LayerSkipConfig] | dict | None = None,
                 guidance_rescale: float = 0.0, use_original_formulation: bool = False, start: float = 0.0,
                 stop: float = 1.0, enabled: bool = True) -> None:
        super().__init__(start, stop, enabled)
        _check_window("perturbed_guidance", perturbed_guidance_start, perturbed_guidance_stop)
        self.guidance_scale = guidance_scale
        self.perturbed_guidance_scale = self._p_scale = perturbed_guidance_scale
        self.perturbed_guidance_start = self._p_start = perturbed_guidance_start
        self.perturbed_guidance_stop = self._p_stop = perturbed_guidance_stop
        self.guidance_rescale = guidance_rescale
        self.use_original_formulation = use_original_formulation
        configs = _as_configs(LayerSkipConfig, "perturbed_guidance", perturbed_guidance_layers,
                              perturbed_guidance_config, skip_attention=False, skip_attention_scores=True,
                              skip_ff=False)
        for c in configs or []:
            if c.skip_attention or not c.skip_attention_scores or c.skip_ff:
                logger.warning("PerturbedAttentionGuidance perturbs attention scores only; setting skip_attention="
                               "False, skip_attention_scores=True, skip_ff=False on %s", c)
            c.skip_attention, c.skip_attention_scores, c.skip_ff = False, True, False
        self._configs = configs

    def _default_configs(self, model: torch.nn.Module) -> list:
        fqn, indices = _default_indices(model, type(self).__name__)
        return [LayerSkipConfig(indices=indices, fqn=fqn, skip_attention=False, skip_attention_scores=True,
                                skip_ff=False)]


class SkipLayerGuidance(_PerturbedGuidance):
    """SLG: the perturbed pass skips the configured blocks (attention and/or feed-forward).

    Default layers: the UNet mid block's transformer blocks / a DiT's middle block, skipped whole.
    """

    @register_to_config
    def __init__(self, guidance_scale: float = 7.5, skip_layer_guidance_scale: float = 2.8,
                 skip_layer_guidance_start: float = 0.01, skip_layer_guidance_stop: float = 0.2,
                 skip_layer_guidance_layers: int | list[int] | None = None,
                 skip_layer_config: LayerSkipConfig | list[LayerSkipConfig] | dict | None = None,
                 guidance_rescale: float = 0.0, use_original_formulation: bool = False, start: float = 0.0,
                 stop: float = 1.0, enabled: bool = True) -> None:
        super().__init__(start, stop, enabled)
        _check_window("skip_layer_guidance", skip_layer_guidance_start, skip_layer_guidance_stop)
        self.guidance_scale = guidance_scale
        self.skip_layer_guidance_scale = self._p_scale = skip_layer_guidance_scale
        self.skip_layer_guidance_start = self._p_start = skip_layer_guidance_start
        self.skip_layer_guidance_stop = self._p_stop = skip_layer_guidance_stop
        self.guidance_rescale = guidance_rescale
        self.use_original_formulation = use_original_formulation
        self._configs = _as_configs(LayerSkipConfig, "skip_layer_guidance", skip_layer_guidance_layers,
                                    skip_layer_config)

    @property
    def skip_layer_config(self) -> list | None:
        return self._configs

    def _default_configs(self, model: torch.nn.Module) -> list:
        fqn, indices = _default_indices(model, type(self).__name__)
        return [LayerSkipConfig(indices=indices, fqn=fqn)]


class SmoothedEnergyGuidance(_PerturbedGuidance):
    """SEG (arXiv 2408.00760): the perturbed pass blurs the self-attention queries of the configured
    blocks (``seg_blur_sigma > seg_blur_threshold_inf`` means infinite blur: the mean query)."""

    _input_predictions = ["pred_cond", "pred_uncond", "pred_cond_seg"]
    _perturbed_id = "pred_cond_seg"

    @register_to_config
    def __init__(self, guidance_scale: float = 7.5, seg_guidance_scale: float = 2.8,
                 seg_blur_sigma: float = 9999999.0, seg_blur_threshold_inf: float = 9999.0,
                 seg_guidance_start: float = 0.0, seg_guidance_stop: float = 1.0,
                 seg_guidance_layers: int | list[int] | None = None,
                 seg_guidance_config: SmoothedEnergyGuidanceConfig | list | dict | None = None,
                 guidance_rescale: float = 0.0, use_original_formulation: bool = False, start: float = 0.0,
                 stop: float = 1.0, enabled: bool = True) -> None:
        super().__init__(start, stop, enabled)
        _check_window("seg_guidance", seg_guidance_start, seg_guidance_stop)
        self.guidance_scale = guidance_scale
        self.seg_guidance_scale = self._p_scale = seg_guidance_scale
        self.seg_blur_sigma = seg_blur_sigma
        self.seg_blur_threshold_inf = seg_blur_threshold_inf
        self.seg_guidance_start = self._p_start = seg_guidance_start
        self.seg_guidance_stop = self._p_stop = seg_guidance_stop
        self.guidance_rescale = guidance_rescale
        self.use_original_formulation = use_original_formulation
        self._configs = _as_configs(SmoothedEnergyGuidanceConfig, "seg_guidance", seg_guidance_layers,
                                    seg_guidance_config)

    def _default_configs(self, model: torch.nn.Module) -> list:
        fqn, indices = _default_indices(model, type(self).__name__)
        return [SmoothedEnergyGuidanceConfig(indices=indices, fqn=fqn)]

    def _apply(self, model: torch.nn.Module, config: Any) -> PerturbationHandle:
        return apply_smoothed_energy(model, config, self.seg_blur_sigma, self.seg_blur_threshold_inf)


class AutoGuidance(_PerturbedGuidance):
    """AutoGuidance (arXiv 2406.02507): CFG whose unconditional pass runs a degraded model (the
    configured blocks skipped or dropped out). Default: the mid / middle block skipped whole."""

    _input_predictions = ["pred_cond", "pred_uncond"]

    @register_to_config
    def __init__(self, guidance_scale: float = 7.5, auto_guidance_layers: int | list[int] | None = None,
                 auto_guidance_config: LayerSkipConfig | list[LayerSkipConfig] | dict | None = None,
                 dropout: float | None = None, guidance_rescale: float = 0.0,
                 use_original_formulation: bool = False, start: float = 0.0, stop: float = 1.0,
                 enabled: bool = True) -> None:
        super().__init__(start, stop, enabled)
        self.guidance_scale = guidance_scale
        self.dropout = dropout
        self.guidance_rescale = guidance_rescale
        self.use_original_formulation = use_original_formulation
        self._p_scale, self._p_start, self._p_stop = 0.0, 0.0, 1.0
        layer_kwargs = {"dropout": 1.0 if dropout is None else dropout}
        self._configs = _as_configs(LayerSkipConfig, "auto_guidance", auto_guidance_layers, auto_guidance_config,
                                    **layer_kwargs)

    def _plan(self) -> list[_Pass]:
        if self._cfg_active():
            return [_Pass("pred_cond", 0), _Pass("pred_uncond", 1, perturbed=True)]
        return [_Pass("pred_cond", 0)]

    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None) -> GuiderOutput:
        if self._cfg_active():
            pred = self._base(pred_cond, pred_uncond) + self.guidance_scale * (pred_cond - pred_uncond)
        else:
            pred = pred_cond
        return self._finish(pred, pred_cond, pred_uncond, self.guidance_rescale)

    def _default_configs(self, model: torch.nn.Module) -> list:
        fqn, indices = _default_indices(model, type(self).__name__)
        return [LayerSkipConfig(indices=indices, fqn=fqn, dropout=1.0 if self.dropout is None else self.dropout)]


def _check_window(name: str, start: float, stop: float) -> None:
    if not (0.0 <= start < 1.0):
        raise ValueError(f"{name}_start must be in [0, 1), got {start}.")
    if not (start <= stop <= 1.0):
        raise ValueError(f"{name}_stop must be in [{name}_start={start}, 1], got {stop}.")
