"""UniPC (Zhao et al. 2023): a multistep predictor (UniP) with a corrector (UniC) reusing the next model call."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ..config import register_to_config
from .base import SchedulerOutput, final_sigma, karras_or_exponential_sigmas, sigma_to_t
from .dpm_solver import _MultistepSolver, multistep_spacing

__all__ = ["UniPCMultistepScheduler"]


class UniPCMultistepScheduler(_MultistepSolver):
    """UniPC multistep sampler (B(h) variants bh1 / bh2), data (x_0) or noise prediction form."""

    order = 1

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
        predict_x0: bool = True,
        solver_type: Literal["bh1", "bh2"] = "bh2",
        lower_order_final: bool = True,
        disable_corrector: Sequence[int] = [],  # noqa: B006  (the Hub config format stores a list)
        solver_p: None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential", "linear"] = "exponential",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        shift_terminal: float | None = None,
    ):
        name = type(self).__name__
        self._check_sigma_options(use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
        if shift_terminal is not None and not use_flow_sigmas:
            raise ValueError(f"{name}: shift_terminal is only supported with use_flow_sigmas=True.")
        if solver_p is not None:
            raise ValueError(f"{name}: solver_p (an external predictor scheduler) is not supported; pass None.")
        if solver_order < 1:
            raise ValueError(f"{name}: solver_order must be >= 1, got {solver_order!r}.")
        if solver_type not in ("bh1", "bh2"):
            if solver_type not in ("midpoint", "heun", "logrho"):  # other solvers' names: fall back to bh2
                raise ValueError(f"{name}: solver_type={solver_type!r} is not supported; expected 'bh1' or 'bh2'.")
            self._config_fixes = {"solver_type": "bh2"}
        self._init_vp_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                               rescale_betas_zero_snr)
        self.predict_x0 = predict_x0
        self.disable_corrector = list(disable_corrector or ())
        self.model_outputs: list[torch.Tensor | None] = [None] * solver_order
        self.timestep_list: list = [None] * solver_order
        self.lower_order_nums = 0
        self.last_sample: torch.Tensor | None = None
        self.this_order = 0

    @property
    def accepts_custom_sigmas(self) -> bool:  # type: ignore[override]
        return bool(self.config.use_flow_sigmas)

    @property
    def accepts_mu(self) -> bool:  # type: ignore[override]
        return bool(self.config.use_dynamic_shifting)

    @property
    def _solver_type(self) -> str:
        return self.config.solver_type

    def time_shift(self, mu: float, sigma: float, t: np.ndarray) -> np.ndarray:
        if self.config.time_shift_type == "exponential":
            return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)
        return mu / (mu + (1 / t - 1) ** sigma)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
    ) -> None:
        """Timesteps by spacing and their sigmas (Karras / exponential / flow variants); resets the history."""
        name = type(self).__name__
        cfg = self.config
        if timesteps is not None:
            raise ValueError(f"{name} does not support custom `timesteps`; use num_inference_steps (or sigmas with "
                             "use_flow_sigmas=True).")
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError(f"{name}.set_timesteps: use_dynamic_shifting=True needs `mu`.")
        if mu is not None and not cfg.use_dynamic_shifting:
            raise ValueError(f"{name}.set_timesteps: `mu` is only used with use_dynamic_shifting=True.")
        if sigmas is not None:
            if not cfg.use_flow_sigmas:
                raise ValueError(f"{name}.set_timesteps: custom `sigmas` need use_flow_sigmas=True.")
            num_inference_steps = len(sigmas)
        num_inference_steps = self._check_num_inference_steps(num_inference_steps)
        n_train = cfg.num_train_timesteps
        timesteps = multistep_spacing(cfg.timestep_spacing, num_inference_steps, n_train, n_train,
                                      cfg.steps_offset, name)
        # the training schedule's last sigma ("zero" or "sigma_min"); the other branches end at their own sigma_min
        train_final = final_sigma(cfg.final_sigmas_type, self.alphas_cumprod, name)
        zero_final = cfg.final_sigmas_type == "zero"

        if cfg.use_karras_sigmas or cfg.use_exponential_sigmas:
            if sigmas is None:
                sigmas = self._train_sigmas
            sigmas = np.asarray(sigmas)
            log_sigmas = np.log(sigmas)
            sigmas = karras_or_exponential_sigmas(np.flip(sigmas), num_inference_steps, cfg.use_karras_sigmas,
                                                  cfg.sigma_min, cfg.sigma_max)
            if cfg.use_karras_sigmas and cfg.use_flow_sigmas:
                sigmas = sigmas / (sigmas + 1)
                timesteps = (sigmas * n_train).copy()
            elif cfg.use_karras_sigmas:
                timesteps = sigma_to_t(sigmas, log_sigmas).round()
            else:
                timesteps = sigma_to_t(sigmas, log_sigmas)
            sigma_last = 0 if zero_final else sigmas[-1]
        elif cfg.use_flow_sigmas:
            if sigmas is None:
                sigmas = np.linspace(1, 1 / n_train, num_inference_steps + 1)[:-1]
            else:
                sigmas = np.asarray(sigmas)
            if cfg.use_dynamic_shifting:
                sigmas = self.time_shift(mu, 1.0, sigmas)
            else:
                sigmas = cfg.flow_shift * sigmas / (1 + (cfg.flow_shift - 1) * sigmas)
            if cfg.shift_terminal:
                one_minus_z = 1 - sigmas
                sigmas = 1 - (one_minus_z / (one_minus_z[-1] / (1 - cfg.shift_terminal)))
            eps = 1e-06
            if np.fabs(sigmas[0] - 1) < eps:  # sigma exactly 1 would make lambda infinite
                sigmas[0] -= eps
            timesteps = (sigmas * n_train).copy()
            sigma_last = 0 if zero_final else sigmas[-1]
        else:
            if sigmas is None:
                sigmas = self._train_sigmas
            sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
            sigma_last = train_final

        sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        self.sigmas = torch.from_numpy(sigmas)
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self.model_outputs = [None] * cfg.solver_order
        self.timestep_list = [None] * cfg.solver_order
        self.lower_order_nums = 0
        self.last_sample = None
        self._step_index = None
        self._begin_index = None
        self._precompute_coefficients()

    # -- the solver ------------------------------------------------------------------------------------
    def convert_model_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """x_0 prediction (predict_x0=True) or epsilon prediction from the raw model output."""
        cfg = self.config
        i = self.step_index
        alpha_t, sigma_t = self._alpha[i], self._sigma[i]
        if self.predict_x0:
            if cfg.prediction_type == "epsilon":
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
            return model_output
        if cfg.prediction_type == "sample":
            return (sample - alpha_t * model_output) / sigma_t
        if cfg.prediction_type == "v_prediction":
            return alpha_t * model_output + sigma_t * sample
        raise ValueError(f"{type(self).__name__}: prediction_type={cfg.prediction_type!r} is not supported with "
                         "predict_x0=False; expected 'epsilon', 'sample' or 'v_prediction'.")

    def _bh_terms(self, h: torch.Tensor, rks: list[torch.Tensor], order: int):
        """phi-function terms of the B(h) update and the linear system R rho = b for its coefficients."""
        rks_t = torch.stack(rks + [torch.ones(())])
        hh = -h if self.predict_x0 else h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial_i = 1
        B_h = hh if self._solver_type == "bh1" else torch.expm1(hh)
        R, b = [], []
        for k in range(1, order + 1):
            R.append(torch.pow(rks_t, k - 1))
            b.append(h_phi_k * factorial_i / B_h)
            factorial_i *= k + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        return h_phi_1, B_h, torch.stack(R), torch.stack(b)

    def _base_update(self, x: torch.Tensor, m0: torch.Tensor, t: int, s: int, h_phi_1: torch.Tensor) -> torch.Tensor:
        if self.predict_x0:
            return self._sigma[t] / self._sigma[s] * x - self._alpha[t] * h_phi_1 * m0
        return self._alpha[t] / self._alpha[s] * x - self._sigma[t] * h_phi_1 * m0

    def multistep_uni_p_bh_update(self, sample: torch.Tensor, order: int) -> torch.Tensor:
        """Predictor: from index i to i+1 using the last `order` converted outputs."""
        i = self.step_index
        outputs = self.model_outputs
        m0 = outputs[-1]
        x = sample
        lam = self._lambda
        h = lam[i + 1] - lam[i]
        rks, D1s = [], []
        for k in range(1, order):
            rk = (lam[i - k] - lam[i]) / h
            rks.append(rk)
            D1s.append((outputs[-(k + 1)] - m0) / rk)
        h_phi_1, B_h, R, b = self._bh_terms(h, rks, order)
        x_t_ = self._base_update(x, m0, i + 1, i, h_phi_1)
        if D1s:
            if order == 2:
                rhos_p = torch.ones(1, dtype=x.dtype, device=x.device) * 0.5
            else:
                rhos_p = torch.linalg.solve(R[:-1, :-1], b[:-1]).to(x.device).to(x.dtype)
            pred_res = torch.einsum("k,bkc...->bc...", rhos_p, torch.stack(D1s, dim=1))
        else:
            pred_res = 0
        scale = self._alpha[i + 1] if self.predict_x0 else self._sigma[i + 1]
        return (x_t_ - scale * B_h * pred_res).to(x.dtype)

    def multistep_uni_c_bh_update(self, this_model_output: torch.Tensor, last_sample: torch.Tensor,
                                  this_sample: torch.Tensor, order: int) -> torch.Tensor:
        """Corrector: refine the sample at index i with the model output just computed there."""
        i = self.step_index
        outputs = self.model_outputs
        m0 = outputs[-1]
        x = last_sample
        lam = self._lambda
        h = lam[i] - lam[i - 1]
        rks, D1s = [], []
        for k in range(1, order):
            rk = (lam[i - (k + 1)] - lam[i - 1]) / h
            rks.append(rk)
            D1s.append((outputs[-(k + 1)] - m0) / rk)
        h_phi_1, B_h, R, b = self._bh_terms(h, rks, order)
        if order == 1:
            rhos_c = torch.ones(1, dtype=x.dtype, device=this_sample.device) * 0.5
        else:
            rhos_c = torch.linalg.solve(R, b).to(this_sample.device).to(x.dtype)
        x_t_ = self._base_update(x, m0, i, i - 1, h_phi_1)
        corr_res = torch.einsum("k,bkc...->bc...", rhos_c[:-1], torch.stack(D1s, dim=1)) if D1s else 0
        D1_t = this_model_output - m0
        scale = self._alpha[i] if self.predict_x0 else self._sigma[i]
        return (x_t_ - scale * B_h * (corr_res + rhos_c[-1] * D1_t)).to(x.dtype)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Correct the current sample with this model output (UniC), then predict the next one (UniP).

        `generator` is accepted for a uniform denoise loop and unused (UniPC is deterministic).
        """
        self._require_set_timesteps()
        if self.step_index is None:
            self._init_step_index(timestep)
        cfg = self.config
        i = self.step_index
        use_corrector = i > 0 and (i - 1) not in self.disable_corrector and self.last_sample is not None
        converted = self.convert_model_output(model_output, sample=sample)
        if use_corrector:
            sample = self.multistep_uni_c_bh_update(converted, self.last_sample, sample, self.this_order)

        self.model_outputs = self.model_outputs[1:] + [converted]
        self.timestep_list = self.timestep_list[1:] + [timestep]
        if cfg.lower_order_final:
            this_order = min(cfg.solver_order, len(self.timesteps) - i)
        else:
            this_order = cfg.solver_order
        self.this_order = min(this_order, self.lower_order_nums + 1)
        self.last_sample = sample
        prev_sample = self.multistep_uni_p_bh_update(sample, self.this_order)
        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
