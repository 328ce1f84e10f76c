"""DDPM (Ho et al. 2020): the ancestral sampler and, above all, the training noise schedule.

Training uses `add_noise` (the forward process), `get_velocity` (the v-prediction target) and
`alphas_cumprod` (Min-SNR weights); sampling uses `set_timesteps` and `step`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ..config import register_to_config
from .base import SchedulerOutput, make_betas, randn_tensor, spaced_timesteps, threshold_sample
from .ddim import _AlphaBarScheduler

__all__ = ["DDPMScheduler"]

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


def _laplace_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Betas whose alpha-bar follows a Laplace distribution of log-SNR (centred at 0, scale 0.5)."""

    def alpha_bar(t: float) -> float:
        lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
        snr = math.exp(lmb)
        return math.sqrt(snr / (1 + snr))

    betas = [min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
             for i in range(num_train_timesteps)]
    return torch.tensor(betas, dtype=torch.float32)


def ddpm_betas(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str,
               trained_betas) -> torch.Tensor:
    """The standard schedules plus the two only DDPM offers ("laplace", "sigmoid")."""
    if trained_betas is None and beta_schedule == "laplace":
        return _laplace_betas(num_train_timesteps)
    if trained_betas is None and beta_schedule == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps)) * (beta_end - beta_start) + beta_start
    try:
        return make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, "DDPMScheduler")
    except ValueError as err:
        raise ValueError(f"{err} DDPMScheduler also accepts 'laplace' and 'sigmoid'.") from None


class DDPMScheduler(_AlphaBarScheduler):
    """Denoising diffusion probabilistic models: x_{t-1} from the posterior q(x_{t-1} | x_t, x_0) plus noise."""

    order = 1
    accepts_custom_timesteps = True

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | np.ndarray | None = None,
        variance_type: Literal["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned",
                               "learned_range"] = "fixed_small",
        clip_sample: bool = True,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"DDPMScheduler: variance_type={variance_type!r} is not supported; expected one of "
                             f"{', '.join(VARIANCE_TYPES)}.")
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"DDPMScheduler: prediction_type={prediction_type!r} is not supported; expected "
                             "'epsilon', 'sample' or 'v_prediction'.")
        self._init_noise_schedule(ddpm_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas),
                                  rescale_betas_zero_snr)
        self.one = torch.tensor(1.0)
        self.num_inference_steps = None
        self.custom_timesteps = False
        self.variance_type = variance_type
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy())

    # -- schedule ------------------------------------------------------------------------------------------
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
    ) -> None:
        """Inference timesteps: `num_inference_steps` spaced per `timestep_spacing`, or custom descending ones."""
        self._reject_custom(None, sigmas, mu)
        cfg = self.config
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("DDPMScheduler.set_timesteps: pass either num_inference_steps or timesteps, not both.")
        if timesteps is not None:
            timesteps = [int(t) for t in timesteps]
            if any(b >= a for a, b in zip(timesteps, timesteps[1:])):
                raise ValueError(f"DDPMScheduler.set_timesteps: custom timesteps must be strictly descending, "
                                 f"got {timesteps}.")
            if timesteps[0] >= cfg.num_train_timesteps:
                raise ValueError(f"DDPMScheduler.set_timesteps: custom timesteps must be below num_train_timesteps="
                                 f"{cfg.num_train_timesteps}, got {timesteps[0]}.")
            values = np.array(timesteps, dtype=np.int64)
            self.custom_timesteps = True
            self.num_inference_steps = len(timesteps)
        else:
            self.num_inference_steps = self._check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
            self.custom_timesteps = False
            values = spaced_timesteps(cfg.timestep_spacing, self.num_inference_steps, cfg.num_train_timesteps,
                                      cfg.steps_offset, "DDPMScheduler", integer=True)
        self.timesteps = torch.from_numpy(values).to(device)

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep after `timestep` in the current schedule (-1 after the last; t-1 before set_timesteps)."""
        if self.custom_timesteps or self.num_inference_steps:
            index = (self.timesteps == timestep).nonzero(as_tuple=True)[0]
            if len(index) == 0:
                raise ValueError(f"DDPMScheduler: timestep {int(timestep)} is not in the current schedule "
                                 f"{self.timesteps.tolist()}; pass one of `scheduler.timesteps`.")
            index = int(index[0])
            return torch.tensor(-1) if index == self.timesteps.shape[0] - 1 else self.timesteps[index + 1]
        return timestep - 1

    # -- sampling ------------------------------------------------------------------------------------------
    def _get_variance(self, t, predicted_variance: torch.Tensor | None = None,
                      variance_type: str | None = None) -> torch.Tensor:
        """Posterior variance (or its log / std, per `variance_type`) at timestep t (eqs. 6-7 of the paper)."""
        prev_t = self.previous_timestep(t)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
        variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
        variance_type = variance_type or self.config.variance_type
        if variance_type == "fixed_small_log":
            return torch.exp(0.5 * torch.log(variance))
        if variance_type == "fixed_large":
            return current_beta_t
        if variance_type == "fixed_large_log":
            return torch.log(current_beta_t)
        if variance_type == "learned":
            return predicted_variance
        if variance_type == "learned_range":
            frac = (predicted_variance + 1) / 2
            return frac * torch.log(current_beta_t) + (1 - frac) * torch.log(variance)
        return variance

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One ancestral step from `timestep` to the previous one in the schedule."""
        cfg = self.config
        t = timestep
        prev_t = self.previous_timestep(t)
        predicted_variance = None
        if model_output.shape[1] == sample.shape[1] * 2 and self.variance_type in ("learned", "learned_range"):
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)

        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t

        if cfg.prediction_type == "epsilon":
            pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
        elif cfg.prediction_type == "sample":
            pred_original_sample = model_output
        else:  # v_prediction (validated in __init__)
            pred_original_sample = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output

        if cfg.thresholding:
            pred_original_sample = threshold_sample(pred_original_sample, cfg.dynamic_thresholding_ratio,
                                                    cfg.sample_max_value)
        elif cfg.clip_sample:
            pred_original_sample = pred_original_sample.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)

        # posterior mean, eq. 7
        pred_original_sample_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
        current_sample_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
        prev_sample = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample

        if t > 0:
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=model_output.dtype)
            variance = self._get_variance(t, predicted_variance=predicted_variance)
            if self.variance_type == "fixed_small_log":
                prev_sample = prev_sample + variance * noise
            elif self.variance_type == "learned_range":
                prev_sample = prev_sample + torch.exp(0.5 * variance) * noise
            else:
                prev_sample = prev_sample + variance**0.5 * noise

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
