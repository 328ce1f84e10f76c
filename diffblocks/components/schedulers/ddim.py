"""DDIM (Song et al. 2020) and PNDM / PLMS (Liu et al. 2022): samplers in alpha-bar space with integer timesteps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ..config import register_to_config
from .base import (
    SchedulerMixin,
    SchedulerOutput,
    _broadcast,
    make_betas,
    randn_tensor,
    spaced_timesteps,
    threshold_sample,
)

__all__ = ["DDIMScheduler", "PNDMScheduler"]


class _AlphaBarScheduler(SchedulerMixin):
    """Schedulers whose noise is x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps, indexed by integer timestep."""

    init_noise_sigma = 1.0

    def _init_alphas(self, num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str,
                     trained_betas, rescale_betas_zero_snr: bool, set_alpha_to_one: bool) -> None:
        betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, type(self).__name__)
        self._init_noise_schedule(betas, rescale_betas_zero_snr)
        # alpha-bar "before" timestep 0: exactly 1 (fully clean) or the first training value.
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps = None

    def scale_model_input(self, sample: torch.Tensor, timestep: int | torch.Tensor | None = None) -> torch.Tensor:
        """These samplers feed the sample to the model unscaled."""
        return sample

    def _sqrt_alpha_terms(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(a_t), sqrt(1 - a_t)) at `timesteps`, on `like`'s device and dtype, broadcastable to it."""
        self.alphas_cumprod = self.alphas_cumprod.to(device=like.device)
        alphas_cumprod = self.alphas_cumprod.to(dtype=like.dtype)
        timesteps = timesteps.to(like.device)
        return (_broadcast(alphas_cumprod[timesteps] ** 0.5, like),
                _broadcast((1 - alphas_cumprod[timesteps]) ** 0.5, like))

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) noise."""
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = self._sqrt_alpha_terms(timesteps, original_samples)
        return sqrt_alpha_prod * original_samples + sqrt_one_minus_alpha_prod * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction target sqrt(a_t) noise - sqrt(1 - a_t) x_0 (for training)."""
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = self._sqrt_alpha_terms(timesteps, sample)
        return sqrt_alpha_prod * noise - sqrt_one_minus_alpha_prod * sample


class DDIMScheduler(_AlphaBarScheduler):
    """DDIM: deterministic for eta=0, DDPM-like for eta=1; supports clipping and dynamic thresholding."""

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | np.ndarray | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        self._init_alphas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                          rescale_betas_zero_snr, set_alpha_to_one)
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy().astype(np.int64))

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
    ) -> None:
        self._reject_custom(timesteps, sigmas, mu)
        cfg = self.config
        self.num_inference_steps = self._check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
        timesteps = spaced_timesteps(cfg.timestep_spacing, self.num_inference_steps, cfg.num_train_timesteps,
                                     cfg.steps_offset, "DDIMScheduler", integer=True)
        self.timesteps = torch.from_numpy(timesteps).to(device)

    def _get_variance(self, timestep, prev_timestep) -> torch.Tensor:
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        return (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """DDIM update (eq. 12 of the paper) from `timestep` to the previous inference timestep."""
        self._require_set_timesteps()
        cfg = self.config
        prev_timestep = timestep - cfg.num_train_timesteps // self.num_inference_steps
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t

        if cfg.prediction_type == "epsilon":
            pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
            pred_epsilon = model_output
        elif cfg.prediction_type == "sample":
            pred_original_sample = model_output
            pred_epsilon = (sample - alpha_prod_t ** (0.5) * pred_original_sample) / beta_prod_t ** (0.5)
        elif cfg.prediction_type == "v_prediction":
            pred_original_sample = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
            pred_epsilon = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
        else:
            raise ValueError(f"DDIMScheduler: prediction_type={cfg.prediction_type!r} is not supported; expected "
                             "'epsilon', 'sample' or 'v_prediction'.")

        if cfg.thresholding:
            pred_original_sample = threshold_sample(pred_original_sample, cfg.dynamic_thresholding_ratio,
                                                    cfg.sample_max_value)
        elif cfg.clip_sample:
            pred_original_sample = pred_original_sample.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)

        variance = self._get_variance(timestep, prev_timestep)
        std_dev_t = eta * variance ** (0.5)
        if use_clipped_model_output:
            pred_epsilon = (sample - alpha_prod_t ** (0.5) * pred_original_sample) / beta_prod_t ** (0.5)
        pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5) * pred_epsilon
        prev_sample = alpha_prod_t_prev ** (0.5) * pred_original_sample + pred_sample_direction

        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("DDIMScheduler.step: pass either `generator` or `variance_noise`, not both.")
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                              dtype=model_output.dtype)
            prev_sample = prev_sample + std_dev_t * variance_noise

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class PNDMScheduler(_AlphaBarScheduler):
    """Pseudo numerical methods (the SD 1.5 default): Runge-Kutta warm-up, then 4th-order linear multistep.

    With `skip_prk_steps=True` (what SD 1.5 ships) the warm-up uses lower-order PLMS steps instead.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | np.ndarray | None = None,
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "leading",
        steps_offset: int = 0,
    ):
        self._init_alphas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, False,
                          set_alpha_to_one)
        self.pndm_order = 4
        self._reset_history()
        self._timesteps = np.arange(0, num_train_timesteps)[::-1].copy()
        self.prk_timesteps = None
        self.plms_timesteps = None
        self.timesteps = None

    def _reset_history(self) -> None:
        self.cur_model_output = 0
        self.counter = 0
        self.cur_sample = None
        self.ets: list[torch.Tensor] = []

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
    ) -> None:
        """Inference timesteps; without skip_prk_steps the last four are expanded into Runge-Kutta substeps."""
        self._reject_custom(timesteps, sigmas, mu)
        cfg = self.config
        n_train = cfg.num_train_timesteps
        n = self._check_num_inference_steps(num_inference_steps)
        if not cfg.skip_prk_steps and n < self.pndm_order:
            raise ValueError(f"PNDMScheduler.set_timesteps: with skip_prk_steps=False at least {self.pndm_order} "
                             f"steps are needed, got {n}.")
        self.num_inference_steps = n
        ts = spaced_timesteps(cfg.timestep_spacing, n, n_train, cfg.steps_offset, "PNDMScheduler", integer=True)[::-1]
        self._timesteps = ts  # ascending

        if cfg.skip_prk_steps:
            # The first PLMS step is done twice (once to get a model output at t, once as a 2nd-order step).
            self.prk_timesteps = np.array([])
            self.plms_timesteps = np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1].copy()
        else:
            prk = np.array(ts[-self.pndm_order:]).repeat(2) + np.tile(
                np.array([0, n_train // n // 2]), self.pndm_order
            )
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].copy()
            self.plms_timesteps = ts[:-3][::-1].copy()
        timesteps = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self.timesteps = torch.from_numpy(timesteps).to(device)
        self._reset_history()

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> SchedulerOutput | tuple:
        """Runge-Kutta substep while in the warm-up, linear multistep afterwards. `generator` is unused."""
        if self.counter < len(self.prk_timesteps if self.prk_timesteps is not None else []) \
                and not self.config.skip_prk_steps:
            return self.step_prk(model_output, timestep, sample, return_dict)
        return self.step_plms(model_output, timestep, sample, return_dict)

    def step_prk(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
                 return_dict: bool = True) -> SchedulerOutput | tuple:
        self._require_set_timesteps()
        diff_to_prev = 0 if self.counter % 2 else self.config.num_train_timesteps // self.num_inference_steps // 2
        prev_timestep = timestep - diff_to_prev
        timestep = self.prk_timesteps[self.counter // 4 * 4]
        phase = self.counter % 4
        if phase == 0:
            self.cur_model_output += 1 / 6 * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif phase in (1, 2):
            self.cur_model_output += 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        prev_sample = self._get_prev_sample(cur_sample, timestep, prev_timestep, model_output)
        self.counter += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def step_plms(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
                  return_dict: bool = True) -> SchedulerOutput | tuple:
        self._require_set_timesteps()
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ValueError("PNDMScheduler.step_plms: the Runge-Kutta warm-up (12 steps) must run first; "
                             "call `step` with the timesteps from `scheduler.timesteps` in order.")
        step = self.config.num_train_timesteps // self.num_inference_steps
        prev_timestep = timestep - step
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:
            prev_timestep = timestep
            timestep = timestep + step

        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(ets) == 1 and self.counter == 1:
            model_output = (model_output + ets[-1]) / 2
            sample = self.cur_sample
            self.cur_sample = None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])

        prev_sample = self._get_prev_sample(sample, timestep, prev_timestep, model_output)
        self.counter += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def _get_prev_sample(self, sample, timestep, prev_timestep, model_output) -> torch.Tensor:
        # Eq. (9) of the PNDM paper: the transfer from x_t to x_{t-delta} given an epsilon estimate.
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        if self.config.prediction_type == "v_prediction":
            model_output = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
        elif self.config.prediction_type != "epsilon":
            raise ValueError(f"PNDMScheduler: prediction_type={self.config.prediction_type!r} is not supported; "
                             "expected 'epsilon' or 'v_prediction'.")
        sample_coeff = (alpha_prod_t_prev / alpha_prod_t) ** (0.5)
        denom = alpha_prod_t * beta_prod_t_prev ** (0.5) + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev) ** (0.5)
        return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * model_output / denom
