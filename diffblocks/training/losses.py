"""The training math, as plain functions the training blocks call: SNR, Min-SNR weights, targets, losses.

Formulas follow the diffusers training scripts (train_text_to_image.py, train_dreambooth.py), so a loss
computed here equals theirs for the same tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["compute_snr", "diffusion_loss", "min_snr_weights", "prior_preservation_loss", "training_target"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def compute_snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) of each timestep, in float32."""
    alphas_cumprod = scheduler.alphas_cumprod.to(device=timesteps.device)
    alpha = alphas_cumprod[timesteps].float() ** 0.5
    sigma = (1.0 - alphas_cumprod[timesteps]).float() ** 0.5
    return (alpha / sigma) ** 2


def min_snr_weights(scheduler, timesteps: torch.Tensor, snr_gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v.

    For `sample` prediction the weight is min(SNR, gamma) itself.
    """
    snr = compute_snr(scheduler, timesteps)
    weights = torch.stack([snr, snr_gamma * torch.ones_like(timesteps, dtype=snr.dtype)], dim=1).min(dim=1)[0]
    if prediction_type == "epsilon":
        return weights / snr
    if prediction_type == "v_prediction":
        return weights / (snr + 1)
    return weights


def training_target(scheduler, prediction_type: str, latents: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor:
    """What the model learns to predict: the noise, the velocity sqrt(a) eps - sqrt(1-a) x0, or x0."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "sample":
        return latents
    raise ValueError(f"training target: prediction_type={prediction_type!r} is not supported; expected one of "
                     f"{', '.join(PREDICTION_TYPES)} (set --prediction_type or the scheduler config).")


def diffusion_loss(model_pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Mean squared error in float32; with per-sample `weights`, the weighted mean of per-sample MSEs."""
    if weights is None:
        return F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    loss = loss.mean(dim=list(range(1, loss.ndim))) * weights
    return loss.mean()


def prior_preservation_loss(model_pred_prior: torch.Tensor, target_prior: torch.Tensor) -> torch.Tensor:
    """DreamBooth's class-prior term: plain MSE on the class half of the batch."""
    return F.mse_loss(model_pred_prior.float(), target_prior.float(), reduction="mean")
