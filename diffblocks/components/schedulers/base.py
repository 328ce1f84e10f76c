"""What every scheduler shares: config I/O, the step-index bookkeeping, noise schedules and noise.

Numbers here follow the Hub's scheduler conventions exactly (float32 betas built with torch, spacing
computed in numpy), because checkpoints were trained against those exact values and pipelines compare
timesteps by equality.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import ConfigMixin

logger = logging.getLogger(__name__)

__all__ = [
    "SCHEDULER_CONFIG_NAME",
    "SchedulerMixin",
    "SchedulerOutput",
    "betas_for_alpha_bar",
    "exponential_sigmas",
    "final_sigma",
    "karras_or_exponential_sigmas",
    "karras_sigmas",
    "make_betas",
    "randn_tensor",
    "rescale_zero_terminal_snr",
    "sigma_to_t",
    "spaced_timesteps",
    "threshold_sample",
    "train_sigmas",
]

SCHEDULER_CONFIG_NAME = "scheduler_config.json"

# Every scheduler class registers itself here so `compatibles` and cross-class `from_config` know them.
_SCHEDULER_CLASSES: dict[str, type[SchedulerMixin]] = {}


@dataclass
class SchedulerOutput:
    """Result of `step`: the next sample and, where the algorithm forms it, the predicted clean sample."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def __getitem__(self, index: int) -> torch.Tensor | None:
        return self.to_tuple()[index]

    def to_tuple(self) -> tuple:
        if self.pred_original_sample is None:
            return (self.prev_sample,)
        return (self.prev_sample, self.pred_original_sample)


# -- beta schedules ------------------------------------------------------------------------------------
def betas_for_alpha_bar(num_diffusion_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Betas that discretise the cosine alpha-bar of Nichol & Dhariwal ("squaredcos_cap_v2")."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return torch.tensor(betas, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so the last timestep has zero SNR (arXiv 2305.08891, algorithm 1)."""
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    alphas_bar_sqrt = alphas_cumprod.sqrt()
    first = alphas_bar_sqrt[0].clone()
    last = alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last
    alphas_bar_sqrt *= first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def make_betas(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str,
               trained_betas: Sequence[float] | np.ndarray | None, owner: str) -> torch.Tensor:
    """The float32 training betas for one of the standard schedules (or the given ones)."""
    if trained_betas is not None:
        return torch.tensor(trained_betas, dtype=torch.float32)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(num_train_timesteps)
    raise ValueError(
        f"{owner}: beta_schedule={beta_schedule!r} is not supported; expected 'linear', 'scaled_linear' or "
        "'squaredcos_cap_v2' (or pass trained_betas)."
    )


# -- sigma schedules -----------------------------------------------------------------------------------
def karras_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int, rho: float = 7.0) -> np.ndarray:
    """Noise levels of Karras et al. (2022), eq. 5, as float64 from sigma_max down to sigma_min."""
    ramp = np.linspace(0, 1, num_inference_steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int) -> np.ndarray:
    """Noise levels evenly spaced in log(sigma)."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_inference_steps))


def karras_or_exponential_sigmas(descending: np.ndarray, num_inference_steps: int, karras: bool,
                                 sigma_min: float | None = None, sigma_max: float | None = None) -> np.ndarray:
    """Karras (or log-uniform) noise levels between the ends of a descending schedule (or the configured
    `sigma_min` / `sigma_max`)."""
    lo = sigma_min if sigma_min is not None else descending[-1].item()
    hi = sigma_max if sigma_max is not None else descending[0].item()
    return (karras_sigmas if karras else exponential_sigmas)(lo, hi, num_inference_steps)


def train_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - a_t) / a_t): the k-diffusion noise level of each training timestep."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def final_sigma(kind: str, alphas_cumprod: torch.Tensor, owner: str) -> float | torch.Tensor:
    """The sigma appended after the last step: 0 ("zero") or the first training sigma ("sigma_min")."""
    if kind == "sigma_min":
        return train_sigmas(alphas_cumprod[0])
    if kind == "zero":
        return 0
    raise ValueError(f"{owner}: final_sigmas_type={kind!r} is not supported; expected 'zero' or 'sigma_min'.")


# -- timestep spacing ----------------------------------------------------------------------------------
def spaced_timesteps(spacing: str, num_inference_steps: int, num_train_timesteps: int, steps_offset: int,
                     owner: str, integer: bool) -> np.ndarray:
    """Descending timesteps for the spacings of arXiv 2305.08891, table 2: int64 rounded (DDIM, DDPM, PNDM) or
    float32 (the sigma samplers, whose 'linspace' is not rounded)."""
    n, n_train = num_inference_steps, num_train_timesteps
    dtype = np.int64 if integer else np.float32
    if spacing == "linspace":
        if integer:
            return np.linspace(0, n_train - 1, n).round()[::-1].copy().astype(np.int64)
        return np.linspace(0, n_train - 1, n, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        step_ratio = n_train // n
        timesteps = (np.arange(0, n) * step_ratio).round()[::-1].copy().astype(dtype)
        timesteps += steps_offset
        return timesteps
    if spacing == "trailing":
        step_ratio = n_train / n
        timesteps = np.round(np.arange(n_train, 0, -step_ratio)).astype(dtype)
        timesteps -= 1
        return timesteps
    raise ValueError(f"{owner}: timestep_spacing={spacing!r} is not supported; expected 'linspace', 'leading' "
                     "or 'trailing'.")


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma, by linear interpolation in log(sigma)."""
    sigmas = np.asarray(sigmas)
    log_sigma = np.log(np.maximum(sigmas.reshape(-1), 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low = log_sigmas[low_idx]
    high = log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.reshape(sigmas.shape)


def threshold_sample(sample: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding (Imagen): clamp each sample to its `ratio` quantile of |x|, then rescale."""
    dtype = sample.dtype
    batch_size, channels, *rest = sample.shape
    if dtype not in (torch.float32, torch.float64):
        sample = sample.float()  # quantile is not implemented for half precision on CPU
    sample = sample.reshape(batch_size, channels * int(np.prod(rest)))
    s = torch.quantile(sample.abs(), ratio, dim=1)
    s = torch.clamp(s, min=1, max=max_value).unsqueeze(1)
    sample = torch.clamp(sample, -s, s) / s
    return sample.reshape(batch_size, channels, *rest).to(dtype)


# -- noise -----------------------------------------------------------------------------------------------
def randn_tensor(shape: Sequence[int], generator: torch.Generator | list[torch.Generator] | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device (so a CPU seed gives the same numbers everywhere).

    A list of generators draws one batch element from each.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    rand_device = device
    if generator is not None:
        gen_device = (generator[0] if isinstance(generator, list) else generator).device
        if gen_device.type != device.type:
            if gen_device.type != "cpu":
                raise ValueError(f"Cannot draw a {device} tensor from a generator on {gen_device}; "
                                 "use a CPU generator or one on the sample's device.")
            rand_device = torch.device("cpu")
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"Got {len(generator)} generators for a batch of {shape[0]}; pass one per sample.")
        one = (1, *shape[1:])
        parts = [torch.randn(one, generator=g, device=rand_device, dtype=dtype) for g in generator]
        return torch.cat(parts, dim=0).to(device)
    return torch.randn(tuple(shape), generator=generator, device=rand_device, dtype=dtype).to(device)


def _broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    values = values.flatten()
    while values.ndim < like.ndim:
        values = values.unsqueeze(-1)
    return values


def _track_explicit_arguments(init, params: tuple[str, ...]):
    """Wrap a config-registering __init__ so the object knows which arguments the caller passed."""

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        self._explicit_config_keys = set(params[: len(args)]) | set(kwargs)
        init(self, *args, **kwargs)

    wrapper._config_params = params  # type: ignore[attr-defined]
    wrapper._tracks_defaults = True  # type: ignore[attr-defined]
    return wrapper


# -- the mixin ---------------------------------------------------------------------------------------------
class SchedulerMixin(ConfigMixin):
    """Config I/O (`scheduler_config.json`), `compatibles`, and the step-index bookkeeping.

    Subclasses set `order`, implement `set_timesteps`, `step`, and set `accepts_custom_timesteps` /
    `accepts_custom_sigmas` so callers can tell which custom schedules are supported.
    """

    config_name = SCHEDULER_CONFIG_NAME
    order: int = 1
    accepts_custom_timesteps: bool = False
    accepts_custom_sigmas: bool = False
    accepts_mu: bool = False
    # DPM-Solver style schedulers fall back to the last index for an unknown timestep; the others raise.
    _unknown_timestep_is_last: bool = False
    # Config values normalised by __init__ (e.g. a foreign solver_type) override what was passed.
    _config_fixes: dict[str, Any] | None = None

    timesteps: torch.Tensor
    sigmas: torch.Tensor
    num_inference_steps: int | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            _SCHEDULER_CLASSES[cls.__name__] = cls
        init = cls.__dict__.get("__init__")
        params = getattr(init, "_config_params", None)
        if params is not None and not getattr(init, "_tracks_defaults", False):
            cls.__init__ = _track_explicit_arguments(init, params)

    def register_to_config(self, **values: Any) -> None:
        fixes = self._config_fixes
        if fixes:
            values = {**values, **{k: v for k, v in fixes.items() if k in values}}
        explicit = self.__dict__.pop("_explicit_config_keys", None)
        if explicit is not None:
            # Like the Hub format's `_use_default_values`: which values were defaults, so another scheduler
            # class built from this config uses its own defaults for them.
            values["_use_default_values"] = sorted(k for k in values if k not in explicit and not k.startswith("_"))
        super().register_to_config(**values)

    @classmethod
    def from_config(cls, config: dict | ConfigMixin | None = None, **overrides: Any):
        """Build from a scheduler config (possibly another scheduler class's), with keyword overrides.

        Values the source only had as its own defaults are not carried over.
        """
        if isinstance(config, ConfigMixin):
            config = dict(config.config)
        config = dict(config or {})
        defaulted = set(config.pop("_use_default_values", None) or ())
        config = {k: v for k, v in config.items() if k not in defaulted}
        return super().from_config(config, **overrides)

    def to_json_string(self) -> str:
        import json

        data = json.loads(super().to_json_string())
        data.pop("_use_default_values", None)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @property
    def compatibles(self) -> list[type[SchedulerMixin]]:
        """Scheduler classes that can be built from this one's config (`Other.from_config(self.config)`)."""
        return list(_SCHEDULER_CLASSES.values())

    def copy_for_call(self) -> SchedulerMixin:
        """A fresh scheduler of this class and config, for a call running while another uses this one.

        Built from the config (not copied), so it shares nothing with the running call's state."""
        return type(self).from_config(self.config)

    # -- step index ----------------------------------------------------------------------------------
    @property
    def step_index(self) -> int | None:
        """Index of the current timestep; advances by one per `step`."""
        return getattr(self, "_step_index", None)

    @property
    def begin_index(self) -> int | None:
        """First index, set by `set_begin_index` (img2img starts part-way into the schedule)."""
        return getattr(self, "_begin_index", None)

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def index_for_timestep(self, timestep: float | torch.Tensor, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of `timestep` in the schedule; with duplicates the second match (so a restart mid-way
        does not skip a sigma)."""
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps
        matches = (schedule_timesteps == timestep).nonzero()
        if len(matches) == 0:
            if self._unknown_timestep_is_last:
                return len(self.timesteps) - 1
            raise ValueError(
                f"{type(self).__name__}: timestep {float(timestep)} is not in the current schedule "
                f"{schedule_timesteps.tolist()}; pass one of `scheduler.timesteps`."
            )
        return matches[1 if len(matches) > 1 else 0].item()

    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        if self.begin_index is None:
            if isinstance(timestep, torch.Tensor):
                timestep = timestep.to(self.timesteps.device)
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def _step_indices(self, timesteps: torch.Tensor, device: torch.device) -> list[int]:
        """Schedule indices for `add_noise`-style calls (one per batch element)."""
        schedule = self.timesteps.to(device)
        timesteps = timesteps.to(device)
        if timesteps.ndim == 0:
            timesteps = timesteps.unsqueeze(0)
        if self.begin_index is None:
            return [self.index_for_timestep(t, schedule) for t in timesteps]
        if self.step_index is not None:
            return [self.step_index] * timesteps.shape[0]
        return [self.begin_index] * timesteps.shape[0]

    # -- the training noise schedule -------------------------------------------------------------------
    def _init_noise_schedule(self, betas: torch.Tensor, rescale_betas_zero_snr: bool,
                             zero_snr_floor: bool = False) -> None:
        """`betas` (rescaled to zero terminal SNR when asked), `alphas` and `alphas_cumprod`.

        `zero_snr_floor`: samplers that divide by alpha-bar (sigma = sqrt((1 - a) / a)) keep the last alpha-bar
        at the smallest float32 step above zero instead of 0, as the reference does.
        """
        if rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if rescale_betas_zero_snr and zero_snr_floor:
            self.alphas_cumprod[-1] = 2**-24

    # -- argument checks shared by __init__, set_timesteps and step ------------------------------------
    def _check_sigma_options(self, use_karras_sigmas: Any, use_exponential_sigmas: Any, use_beta_sigmas: Any,
                             alternatives: str = "use_karras_sigmas or use_exponential_sigmas") -> None:
        name = type(self).__name__
        if use_beta_sigmas:
            raise ValueError(f"{name}: use_beta_sigmas is not supported by diffblocks; use {alternatives}.")
        if bool(use_karras_sigmas) + bool(use_exponential_sigmas) > 1:
            raise ValueError(f"{name}: use only one of use_karras_sigmas and use_exponential_sigmas.")

    def _check_num_inference_steps(self, num_inference_steps: Any, maximum: int | None = None) -> int:
        """`num_inference_steps` as an int >= 1 (and <= `maximum`, the training timesteps, where given)."""
        name = type(self).__name__
        if maximum is not None:
            if num_inference_steps is None or not 1 <= int(num_inference_steps) <= maximum:
                raise ValueError(f"{name}.set_timesteps: num_inference_steps must be in [1, {maximum}] "
                                 f"(num_train_timesteps), got {num_inference_steps!r}.")
        elif num_inference_steps is None or int(num_inference_steps) < 1:
            raise ValueError(f"{name}.set_timesteps: num_inference_steps must be a positive int, got "
                             f"{num_inference_steps!r}.")
        return int(num_inference_steps)

    def _reject_integer_timestep(self, timestep: Any) -> None:
        if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
            raise ValueError(
                f"{type(self).__name__}.step got an integer timestep {timestep!r}; pass a value from "
                "`scheduler.timesteps` (not an index from enumerate)."
            )

    def _require_set_timesteps(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError(f"{type(self).__name__}: call `set_timesteps(num_inference_steps)` before `step`.")

    def _reject_custom(self, timesteps: Any, sigmas: Any, mu: Any) -> None:
        name = type(self).__name__
        if timesteps is not None and not self.accepts_custom_timesteps:
            raise ValueError(f"{name} does not support custom `timesteps`; use num_inference_steps or a scheduler "
                             "that accepts them (Euler, DPM-Solver++, FlowMatchEuler).")
        if sigmas is not None and not self.accepts_custom_sigmas:
            raise ValueError(f"{name} does not support custom `sigmas`; use num_inference_steps or a scheduler "
                             "that accepts them (Euler, FlowMatchEuler).")
        if mu is not None and not self.accepts_mu:
            raise ValueError(f"{name} has no dynamic shifting, so `mu` cannot be used; pass mu=None.")

    def __len__(self) -> int:
        return self.config.num_train_timesteps
