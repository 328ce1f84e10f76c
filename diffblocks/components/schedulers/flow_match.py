"""Euler sampler for rectified-flow models (Flux, SD3): x_t = (1 - sigma) x_0 + sigma noise."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ..config import register_to_config
from .base import SchedulerMixin, SchedulerOutput, _broadcast, karras_or_exponential_sigmas, randn_tensor

logger = logging.getLogger(__name__)

__all__ = ["FlowMatchEulerDiscreteScheduler"]


class FlowMatchEulerDiscreteScheduler(SchedulerMixin):
    """Flow-matching Euler sampler with a static `shift` or resolution-dependent dynamic shifting (`mu`)."""

    order = 1
    init_noise_sigma = 1.0
    accepts_custom_timesteps = True
    accepts_custom_sigmas = True
    accepts_mu = True

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: Literal["exponential", "linear"] = "exponential",
        stochastic_sampling: bool = False,
    ):
        self._check_sigma_options(use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
        if time_shift_type not in ("exponential", "linear"):
            raise ValueError(f"FlowMatchEulerDiscreteScheduler: time_shift_type={time_shift_type!r} is not "
                             "supported; expected 'exponential' or 'linear'.")
        timesteps = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy()
        timesteps = torch.from_numpy(timesteps).to(dtype=torch.float32)
        sigmas = timesteps / num_train_timesteps
        if not use_dynamic_shifting:
            sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        self.timesteps = sigmas * num_train_timesteps
        self.num_inference_steps = None
        self._step_index = None
        self._begin_index = None
        self._shift = shift
        self.sigmas = sigmas.to("cpu")
        self.sigma_min = self.sigmas[-1].item()
        self.sigma_max = self.sigmas[0].item()

    @property
    def shift(self) -> float:
        return self._shift

    def set_shift(self, shift: float) -> None:
        self._shift = shift

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Flow models take the sample unscaled."""
        return sample

    def scale_noise(self, sample: torch.Tensor, timestep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process for img2img: sigma * noise + (1 - sigma) * sample at `timestep`."""
        sigmas = self.sigmas.to(device=sample.device, dtype=sample.dtype)
        indices = self._step_indices(timestep, sample.device)
        sigma = _broadcast(sigmas[indices], sample)
        return sigma * noise + (1.0 - sigma) * sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Same as `scale_noise` (argument order of the other schedulers)."""
        return self.scale_noise(original_samples, timesteps, noise)

    def time_shift(self, mu: float, sigma: float, t: np.ndarray) -> np.ndarray:
        if self.config.time_shift_type == "exponential":
            return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)
        return mu / (mu + (1 / t - 1) ** sigma)

    def stretch_shift_to_terminal(self, t: np.ndarray) -> np.ndarray:
        """Stretch the shifted schedule so it ends exactly at `shift_terminal`."""
        one_minus_z = 1 - t
        scale_factor = one_minus_z[-1] / (1 - self.config.shift_terminal)
        return 1 - (one_minus_z / scale_factor)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
    ) -> None:
        """Sigmas from 1 towards 1/num_train_timesteps (or the given ones), shifted, plus a terminal 0.

        Custom `sigmas` are shifted like the default ones (Flux passes linspace(1, 1/n, n) and `mu`).
        """
        cfg = self.config
        name = type(self).__name__
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError(f"{name}.set_timesteps: use_dynamic_shifting=True needs `mu` (see calculate_shift).")
        if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
            raise ValueError(f"{name}.set_timesteps: sigmas ({len(sigmas)}) and timesteps ({len(timesteps)}) must "
                             "have the same length.")
        if num_inference_steps is not None:
            if (sigmas is not None and len(sigmas) != num_inference_steps) or (
                timesteps is not None and len(timesteps) != num_inference_steps
            ):
                raise ValueError(f"{name}.set_timesteps: sigmas/timesteps must have num_inference_steps="
                                 f"{num_inference_steps} entries.")
        elif sigmas is None and timesteps is None:
            raise ValueError(f"{name}.set_timesteps: pass num_inference_steps, timesteps or sigmas.")
        else:
            num_inference_steps = len(sigmas) if sigmas is not None else len(timesteps)
        num_inference_steps = self._check_num_inference_steps(num_inference_steps)
        self.num_inference_steps = num_inference_steps

        timesteps_given = timesteps is not None
        if timesteps_given:
            if sigmas is None:
                logger.warning("%s: `timesteps` given without `sigmas`; the timesteps are used as given while the "
                               "sigmas derived from them are shifted, so the two may disagree.", name)
            timesteps = np.array(timesteps).astype(np.float32)
        if sigmas is None:
            if timesteps is None:
                timesteps = np.linspace(self.sigma_max * cfg.num_train_timesteps,
                                        self.sigma_min * cfg.num_train_timesteps, num_inference_steps)
            sigmas = timesteps / cfg.num_train_timesteps
        else:
            sigmas = np.array(sigmas).astype(np.float32)
            num_inference_steps = len(sigmas)

        if cfg.use_dynamic_shifting:
            sigmas = self.time_shift(mu, 1.0, sigmas)
        else:
            sigmas = self.shift * sigmas / (1 + (self.shift - 1) * sigmas)
        if cfg.shift_terminal:
            sigmas = self.stretch_shift_to_terminal(sigmas)
        if cfg.use_karras_sigmas or cfg.use_exponential_sigmas:
            sigmas = karras_or_exponential_sigmas(sigmas, num_inference_steps, cfg.use_karras_sigmas)

        sigmas = torch.from_numpy(sigmas).to(dtype=torch.float32, device=device)
        if timesteps_given:
            timesteps = torch.from_numpy(timesteps).to(dtype=torch.float32, device=device)
        else:
            timesteps = sigmas * cfg.num_train_timesteps
        if cfg.invert_sigmas:
            sigmas = 1.0 - sigmas
            timesteps = sigmas * cfg.num_train_timesteps
            sigmas = torch.cat([sigmas, torch.ones(1, device=sigmas.device)])
        else:
            sigmas = torch.cat([sigmas, torch.zeros(1, device=sigmas.device)])
        self.timesteps = timesteps
        self.sigmas = sigmas
        self._step_index = None
        self._begin_index = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * velocity; with stochastic_sampling, re-noise the x_0 estimate.

        The s_* arguments exist for signature compatibility and have no effect (as in the reference).
        """
        self._reject_integer_timestep(timestep)
        if self.step_index is None:
            self._init_step_index(timestep)
        sample = sample.to(torch.float32)
        sigma = self.sigmas[self.step_index]
        sigma_next = self.sigmas[self.step_index + 1]
        if self.config.stochastic_sampling:
            x0 = sample - sigma * model_output
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            prev_sample = (1.0 - sigma_next) * x0 + sigma_next * noise
        else:
            prev_sample = sample + (sigma_next - sigma) * model_output
        self._step_index += 1
        prev_sample = prev_sample.to(model_output.dtype)
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
