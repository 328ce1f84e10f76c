"""Guiders that combine a conditional and an unconditional pass: CFG and its variants."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..components.config import register_to_config
from .base import BaseGuidance, GuiderOutput, _Pass, rescale_noise_cfg

__all__ = [
    "AdaptiveProjectedGuidance",
    "ClassifierFreeGuidance",
    "ClassifierFreeZeroStarGuidance",
    "FrequencyDecoupledGuidance",
    "MomentumBuffer",
    "TangentialClassifierFreeGuidance",
]

_COND, _UNCOND = _Pass("pred_cond", 0), _Pass("pred_uncond", 1)
# the two plans, shared objects: the grouping of a plan is then found by identity (see BaseGuidance._groups)
_BOTH, _COND_ONLY = (_COND, _UNCOND), (_COND,)


class _TwoPassGuidance(BaseGuidance):
    """cond + uncond while active, cond alone otherwise."""

    _input_predictions = ["pred_cond", "pred_uncond"]
    guidance_scale: float
    use_original_formulation: bool

    def _is_active(self) -> bool:
        return (self._enabled and self._in_window(self._start, self._stop)
                and self._scale_active(self.guidance_scale, self.use_original_formulation))

    def _plan(self) -> tuple[_Pass, ...]:
        return _BOTH if self._is_active() else _COND_ONLY

    def _guiding(self) -> bool:
        """`_is_active()` for the current step, read from the step's plan once it is built."""
        plan = self._plan_cache
        return len(plan) > 1 if plan is not None else self._is_active()

    @property
    def requires_unconditional(self) -> bool:
        return self._enabled and self._scale_active(self.guidance_scale, self.use_original_formulation)

    def _base(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor) -> torch.Tensor:
        return pred_cond if self.use_original_formulation else pred_uncond


class ClassifierFreeGuidance(_TwoPassGuidance):
    """CFG: ``uncond + s (cond - uncond)`` (``cond + s (cond - uncond)`` with the original formulation)."""

    @register_to_config
    def __init__(self, guidance_scale: float = 7.5, guidance_rescale: float = 0.0,
                 use_original_formulation: bool = False, start: float = 0.0, stop: float = 1.0,
                 enabled: bool = True) -> None:
        super().__init__(start, stop, enabled)
        self.guidance_scale = guidance_scale
        self.guidance_rescale = guidance_rescale
        self.use_original_formulation = use_original_formulation

    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None) -> GuiderOutput:
        plan = self._plan_cache  # `_guiding()` inlined: this runs every step
        if (len(plan) > 1) if plan is not None else self._is_active():
            base = pred_cond if self.use_original_formulation else pred_uncond
            pred = base + self.guidance_scale * (pred_cond - pred_uncond)
        else:
            pred = pred_cond
        if self.guidance_rescale > 0.0:  # `_finish` inlined
            pred = rescale_noise_cfg(pred, pred_cond, self.guidance_rescale)
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)


class MomentumBuffer:
    """Running average of the guidance direction for APG (``avg = d + momentum * avg``)."""

    def __init__(self, momentum: float) -> None:
        self.momentum = momentum
        self.running_average: torch.Tensor | float = 0

    def update(self, value: torch.Tensor) -> None:
        self.running_average = value + self.momentum * self.running_average

    def __repr__(self) -> str:
        avg = self.running_average
        shape = tuple(avg.shape) if isinstance(avg, torch.Tensor) else ()
        return f"MomentumBuffer(momentum={self.momentum}, shape={shape})"


def _norm_dims(ndim: int, norm_dim: int | Sequence[int] | None) -> list[int]:
    if norm_dim is None:
        return [-i for i in range(1, ndim)]
    if isinstance(norm_dim, int):
        return [norm_dim]
    return list(norm_dim)


def _project(v0: torch.Tensor, v1: torch.Tensor, dims: list[int], upcast: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Parallel and orthogonal parts of v0 with respect to v1 (over `dims`), computed in fp64."""
    dtype, device = v0.dtype, v0.device
    if upcast:
        if device.type in ("mps", "npu"):
            v0, v1 = v0.cpu(), v1.cpu()
        v0, v1 = v0.double(), v1.double()
    v1 = F.normalize(v1, dim=dims)
    parallel = (v0 * v1).sum(dim=dims, keepdim=True) * v1
    orthogonal = v0 - parallel
    return parallel.to(device=device, dtype=dtype), orthogonal.to(device=device, dtype=dtype)


class AdaptiveProjectedGuidance(_TwoPassGuidance):
    """APG (arXiv 2410.02416): momentum on the guidance direction, norm clipping, and down-weighting its
    component parallel to the conditional prediction by `eta`."""

    @register_to_config
    def __init__(self, guidance_scale: float = 7.5, adaptive_projected_guidance_momentum: float | None = None,
                 adaptive_projected_guidance_rescale: float = 15.0,
                 adaptive_projected_guidance_norm_dim: int | tuple[int, ...] | None = None, eta: float = 1.0,
                 guidance_rescale: float = 0.0, use_original_formulation: bool = False, start: float = 0.0,
                 stop: float = 1.0, enabled: bool = True) -> None:
        super().__init__(start, stop, enabled)
        self.guidance_scale = guidance_scale
        self.adaptive_projected_guidance_momentum = adaptive_projected_guidance_momentum
        self.adaptive_projected_guidance_rescale = adaptive_projected_guidance_rescale
        self.adaptive_projected_guidance_norm_dim = adaptive_projected_guidance_norm_dim
        self.eta = eta
        self.guidance_rescale = guidance_rescale
        self.use_original_formulation = use_original_formulation
        self.momentum_buffer: MomentumBuffer | None = None

    def _on_prepare(self) -> None:
        if self._step == 0 and self.adaptive_projected_guidance_momentum is not None:
            self.momentum_buffer = MomentumBuffer(self.adaptive_projected_guidance_momentum)

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), "momentum_buffer": self.momentum_buffer}

    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None) -> GuiderOutput:
        if not self._guiding():
            return self._finish(pred_cond, pred_cond, pred_uncond, self.guidance_rescale)
        diff = pred_cond - pred_uncond
        dims = _norm_dims(diff.ndim, self.adaptive_projected_guidance_norm_dim)
        if self.momentum_buffer is not None:
            self.momentum_buffer.update(diff)
            diff = self.momentum_buffer.running_average
        threshold = self.adaptive_projected_guidance_rescale
        if threshold > 0:
            diff = diff * torch.minimum(torch.ones_like(diff), threshold / diff.norm(p=2, dim=dims, keepdim=True))
        parallel, orthogonal = _project(diff, pred_cond, dims)
        pred = self._base(pred_cond, pred_uncond) + self.guidance_scale * (orthogonal + self.eta * parallel)
        return self._finish(pred, pred_cond, pred_uncond, self.guidance_rescale)


class TangentialClassifierFreeGuidance(_TwoPassGuidance):
    """TCFG (arXiv 2503.18137): drop the unconditional prediction's component along the second singular
    direction of the stacked [cond, uncond] before CFG."""

    @register_to_config
    def __init__(self, guidance_scale: float = 7.5, guidance_rescale: float = 0.0,
                 use_original_formulation: bool = False, start: float = 0.0, stop: float = 1.0,
                 enabled: bool = True) -> None:
        super().__init__(start, stop, enabled)
        self.guidance_scale = guidance_scale
        self.guidance_rescale = guidance_rescale
        self.use_original_formulation = use_original_formulation

    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None) -> GuiderOutput:
        if not self._guiding():
            return self._finish(pred_cond, pred_cond, pred_uncond, self.guidance_rescale)
        dtype = pred_cond.dtype
        stacked = torch.stack([pred_cond, pred_uncond], dim=1).float().flatten(2)
        _, _, vh = torch.linalg.svd(stacked, full_matrices=False)
        vh_kept = vh.clone()
        vh_kept[:, 1] = 0
        uncond_flat = pred_uncond.reshape(pred_uncond.shape[0], 1, -1).float()
        uncond = ((uncond_flat @ vh.transpose(-2, -1)) @ vh_kept).reshape(pred_uncond.shape).to(dtype)
        pred = self._base(pred_cond, uncond) + self.guidance_scale * (pred_cond - uncond)
        return self._finish(pred, pred_cond, pred_uncond, self.guidance_rescale)


class ClassifierFreeZeroStarGuidance(_TwoPassGuidance):
    """CFG-Zero* (arXiv 2503.18886): zero prediction for the first `zero_init_steps`, then CFG with the
    unconditional prediction scaled by its optimal projection ``<c, u> / |u|^2`` per sample."""

    @register_to_config
    def __init__(self, guidance_scale: float = 7.5, zero_init_steps: int = 1, guidance_rescale: float = 0.0,
                 use_original_formulation: bool = False, start: float = 0.0, stop: float = 1.0,
                 enabled: bool = True) -> None:
        super().__init__(start, stop, enabled)
        self.guidance_scale = guidance_scale
        self.zero_init_steps = zero_init_steps
        self.guidance_rescale = guidance_rescale
        self.use_original_formulation = use_original_formulation

    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None) -> GuiderOutput:
        if not self._enabled:
            pred = pred_cond
        elif self._step is not None and self._step < self.zero_init_steps:
            # zero init: nothing to rescale (the std of zeros is 0)
            return GuiderOutput(pred=torch.zeros_like(pred_cond), pred_cond=pred_cond, pred_uncond=pred_uncond)
        elif not self._guiding():
            pred = pred_cond
        else:
            cond, uncond = pred_cond.flatten(1).float(), pred_uncond.flatten(1).float()
            alpha = (cond * uncond).sum(dim=1, keepdim=True) / ((uncond**2).sum(dim=1, keepdim=True) + 1e-8)
            alpha = alpha.to(pred_cond.dtype).view(-1, *(1,) * (pred_cond.ndim - 1))
            uncond_scaled = pred_uncond * alpha
            pred = self._base(pred_cond, uncond_scaled) + self.guidance_scale * (pred_cond - uncond_scaled)
        return self._finish(pred, pred_cond, pred_uncond, self.guidance_rescale)


# -- frequency-decoupled guidance -------------------------------------------------------------------
_PYRAMID_KERNEL_1D = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur5(x: torch.Tensor) -> torch.Tensor:
    """5x5 binomial blur per channel with reflect padding."""
    k1 = _PYRAMID_KERNEL_1D.to(device=x.device, dtype=x.dtype)
    kernel = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, [2, 2, 2, 2], mode="reflect"), kernel, groups=x.shape[1])


def _pyr_down(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.interpolate(_blur5(x), size=(h // 2, w // 2), mode="bilinear", align_corners=False)


def _pyr_up(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    return _blur5(F.interpolate(x, size=(h * 2, w * 2), mode="bilinear", align_corners=False))


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels (fine to coarse) plus the coarsest Gaussian level; sizes that do not halve
    cleanly are reflect-padded at the bottom/right to the next power of two first."""
    if x.ndim != 4:
        raise ValueError(f"the Laplacian pyramid needs (B, C, H, W) predictions, got shape {tuple(x.shape)}.")
    h, w = x.shape[-2:]

    def pow2(n: int) -> bool:
        return n > 0 and n & (n - 1) == 0

    stride = 1 << (levels - 1)
    if not (pow2(h) or pow2(w)) or (levels > 1 and (h % stride or w % stride)):
        x = F.pad(x, (0, (1 << (w - 1).bit_length()) - w, 0, (1 << (h - 1).bit_length()) - h), mode="reflect")
    gaussian = [x]
    for _ in range(levels - 1):
        gaussian.append(_pyr_down(gaussian[-1]))
    return [gaussian[i] - _pyr_up(gaussian[i + 1]) for i in range(levels - 1)] + [gaussian[-1]]


def image_from_pyramid(pyramid: list[torch.Tensor]) -> torch.Tensor:
    image = pyramid[-1]
    for level in reversed(pyramid[:-1]):
        image = _pyr_up(image) + level
    return image


def _per_level(name: str, value: float | Sequence[float] | None, levels: int, default: float) -> list[float]:
    if value is None:
        return [default] * levels
    if isinstance(value, (int, float)):
        return [float(value)] * levels
    if len(value) != levels:
        raise ValueError(f"FrequencyDecoupledGuidance: {name} has {len(value)} entries but guidance_scales has "
                         f"{levels}; give one value or one per level.")
    return [float(v) for v in value]


class FrequencyDecoupledGuidance(_TwoPassGuidance):
    """FDG (arXiv 2506.19713): CFG per Laplacian-pyramid level with its own scale (fine to coarse)."""

    @register_to_config
    def __init__(self, guidance_scales: list[float] | tuple[float, ...] = (10.0, 5.0),
                 guidance_rescale: float | list[float] | tuple[float, ...] = 0.0,
                 parallel_weights: float | list[float] | tuple[float, ...] | None = None,
                 use_original_formulation: bool = False, start: float | list[float] | tuple[float, ...] = 0.0,
                 stop: float | list[float] | tuple[float, ...] = 1.0, guidance_rescale_space: str = "data",
                 upcast_to_double: bool = True, enabled: bool = True) -> None:
        scales = [float(s) for s in guidance_scales]
        if not scales:
            raise ValueError("FrequencyDecoupledGuidance: guidance_scales needs at least one level.")
        levels = len(scales)
        starts, stops = _per_level("start", start, levels, 0.0), _per_level("stop", stop, levels, 1.0)
        super().__init__(min(starts), max(stops), enabled)
        if guidance_rescale_space not in ("data", "freq"):
            raise ValueError(f"FrequencyDecoupledGuidance: guidance_rescale_space must be 'data' or 'freq', "
                             f"got {guidance_rescale_space!r}.")
        self.guidance_scales = scales
        self.levels = levels
        self.guidance_rescale = _per_level("guidance_rescale", guidance_rescale, levels, 0.0)
        self.parallel_weights = _per_level("parallel_weights", parallel_weights, levels, 1.0)
        self.guidance_start, self.guidance_stop = starts, stops
        self.guidance_rescale_space = guidance_rescale_space
        self.use_original_formulation = use_original_formulation
        self.upcast_to_double = upcast_to_double

    @property
    def guidance_scale(self) -> float:
        return self.guidance_scales[0]

    def _level_active(self, level: int) -> bool:
        return (self._enabled and self._in_window(self.guidance_start[level], self.guidance_stop[level])
                and self._scale_active(self.guidance_scales[level], self.use_original_formulation))

    def _is_active(self) -> bool:
        return self._enabled and self._in_window(self._start, self._stop) and any(
            self._scale_active(s, self.use_original_formulation) for s in self.guidance_scales)

    @property
    def requires_unconditional(self) -> bool:
        return self._enabled and any(self._scale_active(s, self.use_original_formulation)
                                     for s in self.guidance_scales)

    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None) -> GuiderOutput:
        if not self._is_active():
            return GuiderOutput(pred=pred_cond, pred_cond=pred_cond, pred_uncond=pred_uncond)
        cond_pyr = laplacian_pyramid(pred_cond, self.levels)
        uncond_pyr = laplacian_pyramid(pred_uncond, self.levels)
        dims = list(range(1, pred_cond.ndim))
        guided = []
        for level in range(self.levels):
            cond, uncond = cond_pyr[level], uncond_pyr[level]
            if not self._level_active(level):
                guided.append(cond)
                continue
            shift = cond - uncond
            weight = self.parallel_weights[level]
            if not math.isclose(weight, 1.0):
                parallel, orthogonal = _project(shift, cond, dims, self.upcast_to_double)
                shift = weight * parallel + orthogonal
            pred = (cond if self.use_original_formulation else uncond) + self.guidance_scales[level] * shift
            if self.guidance_rescale_space == "freq" and self.guidance_rescale[level] > 0.0:
                pred = rescale_noise_cfg(pred, cond, self.guidance_rescale[level])
            guided.append(pred)
        h, w = pred_cond.shape[-2:]
        pred = image_from_pyramid(guided)[..., :h, :w]
        if self.guidance_rescale_space == "data" and self.guidance_rescale[0] > 0.0:
            pred = rescale_noise_cfg(pred, pred_cond, self.guidance_rescale[0])
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)
