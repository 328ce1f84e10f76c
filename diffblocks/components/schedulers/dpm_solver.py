"""Multistep DPM-Solver and DPM-Solver++ (Lu et al. 2022), ODE and SDE variants, orders 1-3."""

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
    final_sigma,
    karras_or_exponential_sigmas,
    make_betas,
    randn_tensor,
    sigma_to_t,
    threshold_sample,
    train_sigmas,
)

__all__ = ["DPMSolverMultistepScheduler"]

_ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")


def multistep_spacing(spacing: str, num_inference_steps: int, last_timestep: int, num_train_timesteps: int,
                      steps_offset: int, owner: str) -> np.ndarray:
    """Descending int64 timesteps for multistep solvers: n+1 points with the final (t=0) one dropped."""
    n = num_inference_steps
    if spacing == "linspace":
        return np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        step_ratio = last_timestep // (n + 1)
        timesteps = (np.arange(0, n + 1) * step_ratio).round()[::-1][:-1].copy().astype(np.int64)
        timesteps += steps_offset
        return timesteps
    if spacing == "trailing":
        step_ratio = num_train_timesteps / n
        timesteps = np.arange(last_timestep, 0, -step_ratio).round().copy().astype(np.int64)
        timesteps -= 1
        return timesteps
    raise ValueError(f"{owner}: timestep_spacing={spacing!r} is not supported; expected 'linspace', 'leading' "
                     "or 'trailing'.")


class _MultistepSolver(SchedulerMixin):
    """Shared state of the exponential-integrator solvers: VP schedule, per-step (alpha, sigma, lambda)."""

    init_noise_sigma = 1.0
    _unknown_timestep_is_last = True

    def _init_vp_schedule(self, num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str,
                          trained_betas, rescale_betas_zero_snr: bool) -> None:
        betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, type(self).__name__)
        self._init_noise_schedule(betas, rescale_betas_zero_snr, zero_snr_floor=True)
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = train_sigmas(self.alphas_cumprod)
        self._train_sigmas = self.sigmas.numpy()
        timesteps = np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=np.float32)[::-1].copy()
        self.timesteps = torch.from_numpy(timesteps)
        self.num_inference_steps = None
        self._step_index = None
        self._begin_index = None

    def _sigma_to_alpha_sigma_t(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.use_flow_sigmas:
            return 1 - sigma, sigma
        alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
        return alpha_t, sigma * alpha_t

    def _precompute_coefficients(self) -> None:
        # Per-index alpha_t, sigma_t and lambda_t = log(alpha_t / sigma_t), so `step` only indexes.
        alpha, sigma = self._sigma_to_alpha_sigma_t(self.sigmas)
        self._alpha = alpha
        self._sigma = sigma
        self._lambda = torch.log(alpha) - torch.log(sigma)

    def _threshold(self, x0: torch.Tensor) -> torch.Tensor:
        return threshold_sample(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Multistep solvers feed the sample to the model unscaled."""
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = alpha_t x_0 + sigma_t noise at the schedule position of `timesteps`."""
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        indices = self._step_indices(timesteps, original_samples.device)
        sigma = _broadcast(sigmas[indices], original_samples)
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(sigma)
        return alpha_t * original_samples + sigma_t * noise


class DPMSolverMultistepScheduler(_MultistepSolver):
    """DPM-Solver++ multistep (orders 1-3, midpoint / heun second-order), its SDE variant, and Karras /
    Lu-lambda / exponential / flow sigma schedules."""

    order = 1
    accepts_custom_timesteps = True
    accepts_mu = True

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | np.ndarray | None = None,
        solver_order: int = 2,
        prediction_type: Literal["epsilon", "sample", "v_prediction", "flow_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: Literal["dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"] = "dpmsolver++",
        solver_type: Literal["midpoint", "heun"] = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: Literal["learned", "learned_range"] | None = None,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
    ):
        name = type(self).__name__
        self._check_sigma_options(use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas,
                                  "use_karras_sigmas, use_exponential_sigmas or use_lu_lambdas")
        fixes = {}
        if algorithm_type not in _ALGORITHMS:
            if algorithm_type != "deis":
                raise ValueError(f"{name}: algorithm_type={algorithm_type!r} is not supported; expected one of "
                                 f"{list(_ALGORITHMS)}.")
            fixes["algorithm_type"] = "dpmsolver++"
        if solver_type not in ("midpoint", "heun"):
            if solver_type not in ("logrho", "bh1", "bh2"):  # other solvers' names: fall back to midpoint
                raise ValueError(f"{name}: solver_type={solver_type!r} is not supported; expected 'midpoint' or "
                                 "'heun'.")
            fixes["solver_type"] = "midpoint"
        if algorithm_type not in ("dpmsolver++", "sde-dpmsolver++") and final_sigmas_type == "zero":
            raise ValueError(f"{name}: final_sigmas_type='zero' is not supported with algorithm_type="
                             f"{algorithm_type!r}; use final_sigmas_type='sigma_min'.")
        if solver_order not in (1, 2, 3):
            raise ValueError(f"{name}: solver_order must be 1, 2 or 3, got {solver_order!r}.")
        self._config_fixes = fixes or None
        self._init_vp_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                               rescale_betas_zero_snr)
        self.model_outputs: list[torch.Tensor | None] = [None] * solver_order
        self.lower_order_nums = 0

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
    ) -> None:
        """Timesteps by spacing (or custom integer timesteps) and the matching sigmas; resets solver history."""
        name = type(self).__name__
        self._reject_custom(timesteps, sigmas, None)
        cfg = self.config
        if mu is not None:
            if not (cfg.use_dynamic_shifting and cfg.time_shift_type == "exponential"):
                raise ValueError(f"{name}.set_timesteps: `mu` needs use_dynamic_shifting=True and "
                                 "time_shift_type='exponential'.")
            self.register_to_config(flow_shift=float(np.exp(mu)))
            cfg = self.config
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError(f"{name}.set_timesteps: pass exactly one of num_inference_steps or timesteps.")
        if timesteps is not None and (cfg.use_karras_sigmas or cfg.use_lu_lambdas or cfg.use_exponential_sigmas):
            raise ValueError(f"{name}.set_timesteps: custom timesteps cannot be used with use_karras_sigmas, "
                             "use_lu_lambdas or use_exponential_sigmas.")
        if timesteps is not None:
            timesteps = np.array(timesteps).astype(np.int64)
        else:
            num_inference_steps = self._check_num_inference_steps(num_inference_steps)
            # Skip the high-noise end where lambda is below lambda_min_clipped (cosine schedules).
            clipped_idx = torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped)
            last_timestep = (cfg.num_train_timesteps - clipped_idx).numpy().item()
            timesteps = multistep_spacing(cfg.timestep_spacing, num_inference_steps, last_timestep,
                                          cfg.num_train_timesteps, cfg.steps_offset, name)

        sigmas = self._train_sigmas
        log_sigmas = np.log(sigmas)
        if cfg.use_karras_sigmas or cfg.use_exponential_sigmas:
            sigmas = karras_or_exponential_sigmas(np.flip(sigmas), num_inference_steps, cfg.use_karras_sigmas)
            timesteps = sigma_to_t(sigmas, log_sigmas)
            if cfg.use_karras_sigmas and cfg.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        elif cfg.use_lu_lambdas:
            lambdas = np.flip(log_sigmas.copy())
            lambda_min, lambda_max = lambdas[-1].item(), lambdas[0].item()
            ramp = np.linspace(0, 1, num_inference_steps)
            lambdas = lambda_max + ramp * (lambda_min - lambda_max)  # uniform in log-SNR
            sigmas = np.exp(lambdas)
            timesteps = sigma_to_t(sigmas, log_sigmas)
            if cfg.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        elif cfg.use_flow_sigmas:
            alphas = np.linspace(1, 1 / cfg.num_train_timesteps, num_inference_steps + 1)
            flow = 1.0 - alphas
            flow = np.flip(cfg.flow_shift * flow / (1 + (cfg.flow_shift - 1) * flow))[:-1].copy()
            sigmas = flow
            timesteps = (sigmas * cfg.num_train_timesteps).copy()
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)

        sigmas = np.concatenate([sigmas, [final_sigma(cfg.final_sigmas_type, self.alphas_cumprod, name)]]).astype(np.float32)
        self.sigmas = torch.from_numpy(sigmas)
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self.model_outputs = [None] * cfg.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None
        self._precompute_coefficients()

    # -- the solver ----------------------------------------------------------------------------------
    def convert_model_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The model output as the solver's quantity: x_0 for the ++ variants, epsilon otherwise."""
        cfg = self.config
        i = self.step_index
        alpha_t, sigma_t = self._alpha[i], self._sigma[i]
        if cfg.algorithm_type in ("dpmsolver++", "sde-dpmsolver++"):
            if cfg.prediction_type == "epsilon":
                if cfg.variance_type in ("learned", "learned_range"):
                    model_output = model_output[:, :3]
                x0_pred = (sample - sigma_t * model_output) / alpha_t
            elif cfg.prediction_type == "sample":
                x0_pred = model_output
            elif cfg.prediction_type == "v_prediction":
                x0_pred = alpha_t * sample - sigma_t * model_output
            elif cfg.prediction_type == "flow_prediction":
                x0_pred = sample - self.sigmas[i] * model_output
            else:
                raise ValueError(f"{type(self).__name__}: prediction_type={cfg.prediction_type!r} is not supported; "
                                 "expected 'epsilon', 'sample', 'v_prediction' or 'flow_prediction'.")
            return self._threshold(x0_pred) if cfg.thresholding else x0_pred

        if cfg.prediction_type == "epsilon":
            epsilon = model_output[:, :3] if cfg.variance_type in ("learned", "learned_range") else model_output
        elif cfg.prediction_type == "sample":
            epsilon = (sample - alpha_t * model_output) / sigma_t
        elif cfg.prediction_type == "v_prediction":
            epsilon = alpha_t * model_output + sigma_t * sample
        else:
            raise ValueError(f"{type(self).__name__}: prediction_type={cfg.prediction_type!r} is not supported with "
                             f"algorithm_type={cfg.algorithm_type!r}; expected 'epsilon', 'sample' or 'v_prediction'.")
        if cfg.thresholding:
            x0_pred = self._threshold((sample - sigma_t * epsilon) / alpha_t)
            epsilon = (sample - alpha_t * x0_pred) / sigma_t
        return epsilon

    def dpm_solver_first_order_update(self, model_output: torch.Tensor, sample: torch.Tensor,
                                      noise: torch.Tensor | None = None) -> torch.Tensor:
        """One DPM-Solver-1 step (equivalent to DDIM) from index i to i+1."""
        i = self.step_index
        alpha_t, sigma_t, lambda_t = self._alpha[i + 1], self._sigma[i + 1], self._lambda[i + 1]
        alpha_s, sigma_s, lambda_s = self._alpha[i], self._sigma[i], self._lambda[i]
        h = lambda_t - lambda_s
        algorithm = self.config.algorithm_type
        if algorithm == "dpmsolver++":
            return (sigma_t / sigma_s) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * model_output
        if algorithm == "dpmsolver":
            return (alpha_t / alpha_s) * sample - (sigma_t * (torch.exp(h) - 1.0)) * model_output
        if algorithm == "sde-dpmsolver++":
            return (
                (sigma_t / sigma_s * torch.exp(-h)) * sample
                + (alpha_t * (1 - torch.exp(-2.0 * h))) * model_output
                + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
            )
        return (  # sde-dpmsolver
            (alpha_t / alpha_s) * sample
            - 2.0 * (sigma_t * (torch.exp(h) - 1.0)) * model_output
            + sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0) * noise
        )

    def multistep_dpm_solver_second_order_update(self, model_output_list: list[torch.Tensor], sample: torch.Tensor,
                                                 noise: torch.Tensor | None = None) -> torch.Tensor:
        """Second-order multistep update from the last two converted outputs."""
        i = self.step_index
        alpha_t, sigma_t, lambda_t = self._alpha[i + 1], self._sigma[i + 1], self._lambda[i + 1]
        alpha_s0, sigma_s0, lambda_s0 = self._alpha[i], self._sigma[i], self._lambda[i]
        lambda_s1 = self._lambda[i - 1]
        m0, m1 = model_output_list[-1], model_output_list[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        D0, D1 = m0, (1.0 / r0) * (m0 - m1)
        algorithm, solver = self.config.algorithm_type, self.config.solver_type
        if algorithm == "dpmsolver++":
            if solver == "midpoint":
                return (
                    (sigma_t / sigma_s0) * sample
                    - (alpha_t * (torch.exp(-h) - 1.0)) * D0
                    - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * D1
                )
            return (
                (sigma_t / sigma_s0) * sample
                - (alpha_t * (torch.exp(-h) - 1.0)) * D0
                + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * D1
            )
        if algorithm == "dpmsolver":
            if solver == "midpoint":
                return (
                    (alpha_t / alpha_s0) * sample
                    - (sigma_t * (torch.exp(h) - 1.0)) * D0
                    - 0.5 * (sigma_t * (torch.exp(h) - 1.0)) * D1
                )
            return (
                (alpha_t / alpha_s0) * sample
                - (sigma_t * (torch.exp(h) - 1.0)) * D0
                - (sigma_t * ((torch.exp(h) - 1.0) / h - 1.0)) * D1
            )
        if algorithm == "sde-dpmsolver++":
            if solver == "midpoint":
                return (
                    (sigma_t / sigma_s0 * torch.exp(-h)) * sample
                    + (alpha_t * (1 - torch.exp(-2.0 * h))) * D0
                    + 0.5 * (alpha_t * (1 - torch.exp(-2.0 * h))) * D1
                    + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
                )
            return (
                (sigma_t / sigma_s0 * torch.exp(-h)) * sample
                + (alpha_t * (1 - torch.exp(-2.0 * h))) * D0
                + (alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * D1
                + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
            )
        if solver == "midpoint":  # sde-dpmsolver
            return (
                (alpha_t / alpha_s0) * sample
                - 2.0 * (sigma_t * (torch.exp(h) - 1.0)) * D0
                - (sigma_t * (torch.exp(h) - 1.0)) * D1
                + sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0) * noise
            )
        return (
            (alpha_t / alpha_s0) * sample
            - 2.0 * (sigma_t * (torch.exp(h) - 1.0)) * D0
            - 2.0 * (sigma_t * ((torch.exp(h) - 1.0) / h - 1.0)) * D1
            + sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0) * noise
        )

    def multistep_dpm_solver_third_order_update(self, model_output_list: list[torch.Tensor], sample: torch.Tensor,
                                                noise: torch.Tensor | None = None) -> torch.Tensor:
        """Third-order multistep update from the last three converted outputs."""
        i = self.step_index
        alpha_t, sigma_t, lambda_t = self._alpha[i + 1], self._sigma[i + 1], self._lambda[i + 1]
        alpha_s0, sigma_s0, lambda_s0 = self._alpha[i], self._sigma[i], self._lambda[i]
        lambda_s1, lambda_s2 = self._lambda[i - 1], self._lambda[i - 2]
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        D0 = m0
        D1_0, D1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
        D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
        D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1)
        algorithm = self.config.algorithm_type
        if algorithm == "dpmsolver++":
            return (
                (sigma_t / sigma_s0) * sample
                - (alpha_t * (torch.exp(-h) - 1.0)) * D0
                + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * D1
                - (alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5)) * D2
            )
        if algorithm == "dpmsolver":
            return (
                (alpha_t / alpha_s0) * sample
                - (sigma_t * (torch.exp(h) - 1.0)) * D0
                - (sigma_t * ((torch.exp(h) - 1.0) / h - 1.0)) * D1
                - (sigma_t * ((torch.exp(h) - 1.0 - h) / h**2 - 0.5)) * D2
            )
        if algorithm == "sde-dpmsolver++":
            return (
                (sigma_t / sigma_s0 * torch.exp(-h)) * sample
                + (alpha_t * (1.0 - torch.exp(-2.0 * h))) * D0
                + (alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * D1
                + (alpha_t * ((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * D2
                + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
            )
        raise ValueError(f"{type(self).__name__}: solver_order=3 is not available for algorithm_type="
                         f"{algorithm!r}; use solver_order<=2 or 'dpmsolver++' / 'sde-dpmsolver++'.")

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One multistep update; the order ramps up over the first steps and drops at the end
        (`lower_order_final`, `euler_at_final`, and always with a zero final sigma)."""
        self._require_set_timesteps()
        if self.step_index is None:
            self._init_step_index(timestep)
        cfg = self.config
        i, n = self.step_index, len(self.timesteps)
        lower_order_final = i == n - 1 and (
            cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero"
        )
        lower_order_second = i == n - 2 and cfg.lower_order_final and n < 15

        model_output = self.convert_model_output(model_output, sample=sample)
        self.model_outputs = self.model_outputs[1:] + [model_output]
        sample = sample.to(torch.float32)
        noise = None
        if cfg.algorithm_type in ("sde-dpmsolver", "sde-dpmsolver++"):
            if variance_noise is None:
                noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                     dtype=torch.float32)
            else:
                noise = variance_noise.to(device=model_output.device, dtype=torch.float32)

        if cfg.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final:
            prev_sample = self.dpm_solver_first_order_update(model_output, sample, noise)
        elif cfg.solver_order == 2 or self.lower_order_nums < 2 or lower_order_second:
            prev_sample = self.multistep_dpm_solver_second_order_update(self.model_outputs, sample, noise)
        else:
            prev_sample = self.multistep_dpm_solver_third_order_update(self.model_outputs, sample, noise)
        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1

        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
