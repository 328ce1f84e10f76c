"""Euler samplers over the discrete DDPM noise schedule (Karras et al. 2022, algorithm 2)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ..config import register_to_config
from .base import (
    SchedulerMixin,
    SchedulerOutput,
    _broadcast,
    final_sigma,
    karras_or_exponential_sigmas,
    make_betas,
    randn_tensor,
    sigma_to_t,
    spaced_timesteps,
    train_sigmas,
)

logger = logging.getLogger(__name__)

__all__ = ["EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler"]


class _DiscreteSigmaScheduler(SchedulerMixin):
    """Shared parts of the k-diffusion style samplers: x is scaled by 1/sqrt(sigma^2+1) before the model."""

    def _init_training_schedule(self, num_train_timesteps: int, beta_start: float, beta_end: float,
                                beta_schedule: str, trained_betas, rescale_betas_zero_snr: bool) -> None:
        betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, type(self).__name__)
        self._init_noise_schedule(betas, rescale_betas_zero_snr, zero_snr_floor=True)
        self._train_sigmas = train_sigmas(self.alphas_cumprod).numpy()
        self.num_inference_steps = None
        self.is_scale_input_called = False
        self._step_index = None
        self._begin_index = None

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """Standard deviation of the starting noise (the largest sigma, plus unit variance for 'leading')."""
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    _schedule_constants: tuple | None = None

    def _per_step(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per-timestep scalars of the current `sigmas`, computed once per schedule instead of once per step:
        (sigma_i, sqrt(sigma_i^2 + 1), sigma_{i+1} - sigma_i), each a list of 0-d tensors (indexing a list is no
        tensor op). Computed with the same float operations as the per-step formulas, element-wise, so every
        value is bit-identical to what the step would compute; rebuilt whenever `sigmas` is replaced."""
        constants = self._schedule_constants
        sigmas = self.sigmas
        if constants is None or constants[0] is not sigmas:
            scales = (sigmas**2 + 1) ** 0.5
            steps = sigmas[1:] - sigmas[:-1]
            constants = self._schedule_constants = (sigmas, list(sigmas.unbind()), list(scales.unbind()),
                                                    list(steps.unbind()))
        return constants[1], constants[2], constants[3]

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """Divide by sqrt(sigma^2 + 1) so the model sees unit-variance input."""
        if self._step_index is None:
            self._init_step_index(timestep)
        self.is_scale_input_called = True
        return sample / self._per_step()[1][self._step_index]

    def _begin_step(self, timestep: float | torch.Tensor) -> None:
        """Checks and step-index set-up at the start of `step`."""
        if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
            self._reject_integer_timestep(timestep)  # raises
        if not self.is_scale_input_called:
            logger.warning("%s.step called without scale_model_input; the model input was not scaled.",
                           type(self).__name__)
        if self._step_index is None:
            self._init_step_index(timestep)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = x_0 + sigma_t * noise (the k-diffusion parameterisation)."""
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        indices = self._step_indices(timesteps, original_samples.device)
        sigma = _broadcast(sigmas[indices], original_samples)
        return original_samples + noise * sigma

    def _pred_original(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor,
                       sigma_hat: torch.Tensor) -> torch.Tensor:
        prediction_type = self.config["prediction_type"]
        if prediction_type in ("sample", "original_sample"):
            return model_output
        if prediction_type == "epsilon":
            return sample - sigma_hat * model_output
        if prediction_type == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
        raise ValueError(f"{type(self).__name__}: prediction_type={prediction_type!r} is not supported; expected "
                         "'epsilon', 'v_prediction' or 'sample'.")


class EulerDiscreteScheduler(_DiscreteSigmaScheduler):
    """Euler sampler (the SDXL default), with Karras / exponential sigmas and optional churn."""

    order = 1
    accepts_custom_timesteps = True
    accepts_custom_sigmas = True

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | np.ndarray | None = None,
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: bool | None = False,
        use_exponential_sigmas: bool | None = False,
        use_beta_sigmas: bool | None = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        timestep_type: Literal["discrete", "continuous"] = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
    ):
        self._check_sigma_options(use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
        self._init_training_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                                     rescale_betas_zero_snr)
        sigmas = torch.from_numpy(self._train_sigmas).flip(0)
        if timestep_type == "continuous" and prediction_type == "v_prediction":
            self.timesteps = torch.Tensor([0.25 * s.log() for s in sigmas])
        else:
            timesteps = np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=float)[::-1].copy()
            self.timesteps = torch.from_numpy(timesteps).to(dtype=torch.float32)
        self.sigmas = torch.cat([sigmas, torch.zeros(1)])
        self.use_karras_sigmas = use_karras_sigmas
        self.use_exponential_sigmas = use_exponential_sigmas
        self.use_beta_sigmas = use_beta_sigmas

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
    ) -> None:
        """Build the inference schedule from a step count, custom timesteps, or custom sigmas (incl. the final 0)."""
        self._reject_custom(timesteps, sigmas, mu)
        cfg = self.config
        name = type(self).__name__
        if timesteps is not None and sigmas is not None:
            raise ValueError(f"{name}.set_timesteps: pass only one of `timesteps` or `sigmas`.")
        if num_inference_steps is None and timesteps is None and sigmas is None:
            raise ValueError(f"{name}.set_timesteps: pass num_inference_steps, timesteps or sigmas.")
        if num_inference_steps is not None and (timesteps is not None or sigmas is not None):
            raise ValueError(f"{name}.set_timesteps: num_inference_steps cannot be combined with custom "
                             "timesteps or sigmas.")
        continuous_v = cfg.timestep_type == "continuous" and cfg.prediction_type == "v_prediction"
        if timesteps is not None and (cfg.use_karras_sigmas or cfg.use_exponential_sigmas or continuous_v):
            raise ValueError(f"{name}.set_timesteps: custom timesteps cannot be used with use_karras_sigmas, "
                             "use_exponential_sigmas or continuous v-prediction timesteps.")
        if num_inference_steps is None:
            num_inference_steps = len(timesteps) if timesteps is not None else len(sigmas) - 1
        num_inference_steps = self._check_num_inference_steps(num_inference_steps)
        self.num_inference_steps = num_inference_steps
        log_sigmas = np.log(self._train_sigmas)

        if sigmas is not None:
            sigmas = np.array(sigmas).astype(np.float32)
            timesteps = sigma_to_t(sigmas[:-1], log_sigmas)
        else:
            if timesteps is not None:
                timesteps = np.array(timesteps).astype(np.float32)
            else:
                timesteps = spaced_timesteps(cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps,
                                             cfg.steps_offset, name, integer=False)
            train_sigmas = self._train_sigmas
            if cfg.interpolation_type == "linear":
                sigmas = np.interp(timesteps, np.arange(0, len(train_sigmas)), train_sigmas)
            elif cfg.interpolation_type == "log_linear":
                sigmas = torch.linspace(np.log(train_sigmas[-1]), np.log(train_sigmas[0]),
                                        num_inference_steps + 1).exp().numpy()
            else:
                raise ValueError(f"{name}: interpolation_type={cfg.interpolation_type!r} is not supported; "
                                 "expected 'linear' or 'log_linear'.")
            if cfg.use_karras_sigmas or cfg.use_exponential_sigmas:
                sigmas = karras_or_exponential_sigmas(sigmas, num_inference_steps, cfg.use_karras_sigmas,
                                                      cfg.sigma_min, cfg.sigma_max)
                timesteps = sigma_to_t(sigmas, log_sigmas)
            sigma_last = final_sigma(cfg.final_sigmas_type, self.alphas_cumprod, name)
            sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)

        sigmas = torch.from_numpy(sigmas).to(dtype=torch.float32, device=device)
        if continuous_v:
            self.timesteps = torch.Tensor([0.25 * s.log() for s in sigmas[:-1]]).to(device=device)
        else:
            self.timesteps = torch.from_numpy(timesteps.astype(np.float32)).to(device=device)
        self._step_index = None
        self._begin_index = None
        self.sigmas = sigmas.to("cpu")

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
        """One Euler step from sigma_i to sigma_{i+1}; `s_churn > 0` adds fresh noise first (SDE-like)."""
        self._begin_step(timestep)
        sample = sample.to(torch.float32)
        index = self._step_index
        sigmas, _, steps = self._per_step()
        sigma = sigmas[index]
        gamma = 0.0
        if s_churn > 0 and s_tmin <= sigma <= s_tmax:
            gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1)
        if gamma > 0:
            sigma_hat = sigma * (gamma + 1)
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=model_output.dtype)
            sample = sample + noise * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
            dt = sigmas[index + 1] - sigma_hat
        else:  # sigma * (0 + 1) is sigma exactly, and the step size is the schedule's own
            sigma_hat, dt = sigma, steps[index]
        pred_original_sample = self._pred_original(model_output, sample, sigma, sigma_hat)
        derivative = (sample - pred_original_sample) / sigma_hat
        prev_sample = (sample + derivative * dt).to(model_output.dtype)
        self._step_index = index + 1
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class EulerAncestralDiscreteScheduler(_DiscreteSigmaScheduler):
    """Euler ancestral sampler: a deterministic step to sigma_down plus fresh noise of size sigma_up."""

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | np.ndarray | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._init_training_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                                     rescale_betas_zero_snr)
        sigmas = np.concatenate([self._train_sigmas[::-1], [0.0]]).astype(np.float32)
        self.sigmas = torch.from_numpy(sigmas)
        timesteps = np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=float)[::-1].copy()
        self.timesteps = torch.from_numpy(timesteps)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
    ) -> None:
        """Evenly spaced timesteps (per `timestep_spacing`) and their interpolated sigmas, plus a final 0."""
        self._reject_custom(timesteps, sigmas, mu)
        cfg = self.config
        num_inference_steps = self._check_num_inference_steps(num_inference_steps)
        self.num_inference_steps = num_inference_steps
        timesteps = spaced_timesteps(cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps,
                                     cfg.steps_offset, type(self).__name__, integer=False)
        train_sigmas = self._train_sigmas
        sigmas = np.interp(timesteps, np.arange(0, len(train_sigmas)), train_sigmas)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.timesteps = torch.from_numpy(timesteps).to(device=device)
        self.sigmas = torch.from_numpy(sigmas)
        self._step_index = None
        self._begin_index = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Step to sigma_down deterministically, then add noise * sigma_up (drawn every step, also the last)."""
        self._begin_step(timestep)
        if self.config.prediction_type == "sample":
            raise ValueError("EulerAncestralDiscreteScheduler: prediction_type='sample' is not supported; use "
                             "'epsilon' or 'v_prediction'.")
        sigma = self.sigmas[self.step_index]
        sample = sample.to(torch.float32)
        pred_original_sample = self._pred_original(model_output, sample, sigma, sigma)
        sigma_to = self.sigmas[self.step_index + 1]
        sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        derivative = (sample - pred_original_sample) / sigma
        prev_sample = sample + derivative * (sigma_down - sigma)
        noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                             dtype=model_output.dtype)
        prev_sample = (prev_sample + noise * sigma_up).to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
