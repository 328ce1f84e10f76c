"""Timestep helpers the pipeline presets share: custom schedules, img2img truncation, Flux's `mu`.

Each reproduces the arithmetic of the standard SD / SDXL / Flux pipelines exactly (including their
rounding), so a preset produces the same schedule as those pipelines for the same arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import SchedulerMixin

__all__ = ["calculate_shift", "denoising_end_timesteps", "img2img_timesteps", "retrieve_timesteps"]


def retrieve_timesteps(
    scheduler: SchedulerMixin,
    num_inference_steps: int | None = None,
    device: str | torch.device | None = None,
    timesteps: Sequence[float] | None = None,
    sigmas: Sequence[float] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, int]:
    """Call `scheduler.set_timesteps` with a step count or a custom schedule; return (timesteps, steps).

    With custom `timesteps` or `sigmas` the step count is the schedule's length. Extra kwargs (e.g. `mu`)
    go to `set_timesteps`.
    """
    name = type(scheduler).__name__
    if timesteps is not None and sigmas is not None:
        raise ValueError("retrieve_timesteps: pass only one of `timesteps` or `sigmas`.")
    if timesteps is not None:
        if not getattr(scheduler, "accepts_custom_timesteps", False):
            raise ValueError(f"retrieve_timesteps: {name} does not support custom timestep schedules; use "
                             "num_inference_steps or a scheduler that does (e.g. EulerDiscreteScheduler).")
        scheduler.set_timesteps(timesteps=timesteps, device=device, **kwargs)
        return scheduler.timesteps, len(scheduler.timesteps)
    if sigmas is not None:
        if not getattr(scheduler, "accepts_custom_sigmas", False):
            raise ValueError(f"retrieve_timesteps: {name} does not support custom sigma schedules; use "
                             "num_inference_steps or a scheduler that does (e.g. EulerDiscreteScheduler).")
        scheduler.set_timesteps(sigmas=sigmas, device=device, **kwargs)
        return scheduler.timesteps, len(scheduler.timesteps)
    scheduler.set_timesteps(num_inference_steps, device=device, **kwargs)
    return scheduler.timesteps, num_inference_steps


def _is_fraction(value: Any) -> bool:
    # The pipelines only honour denoising_start/end given as a float strictly inside (0, 1).
    return isinstance(value, float) and 0 < value < 1


def img2img_timesteps(
    scheduler: SchedulerMixin,
    num_inference_steps: int,
    strength: float,
    denoising_start: float | None = None,
    fractional_strength: bool = False,
) -> tuple[torch.Tensor, int]:
    """Drop the first part of the schedule for img2img; return (timesteps, remaining steps).

    `strength` keeps the last `int(num_inference_steps * strength)` steps (SD / SDXL). With
    `fractional_strength=True` it keeps `num_inference_steps - int(num_inference_steps * (1 - strength))`,
    which is how Flux rounds. A `denoising_start` in (0, 1) overrides strength (SDXL refiner): the
    schedule starts at the first timestep below the cut-off. The scheduler's begin index is set to match.
    """
    if not 0 <= strength <= 1 and not _is_fraction(denoising_start):
        raise ValueError(f"img2img_timesteps: strength must be in [0, 1], got {strength}.")
    order = scheduler.order
    if not _is_fraction(denoising_start):
        if fractional_strength:
            init_timestep = min(num_inference_steps * strength, num_inference_steps)
            t_start = int(max(num_inference_steps - init_timestep, 0))
        else:
            init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
            t_start = max(num_inference_steps - init_timestep, 0)
        timesteps = scheduler.timesteps[t_start * order:]
        scheduler.set_begin_index(t_start * order)
        return timesteps, num_inference_steps - t_start

    n_train = scheduler.config.num_train_timesteps
    cutoff = int(round(n_train - (denoising_start * n_train)))
    steps = int((scheduler.timesteps < cutoff).sum().item())
    if order == 2 and steps % 2 == 0:
        # A second-order scheduler duplicates timesteps; never start between the two halves of a step.
        steps += 1
    t_start = len(scheduler.timesteps) - steps
    scheduler.set_begin_index(t_start)
    return scheduler.timesteps[t_start:], steps


def denoising_end_timesteps(
    scheduler: SchedulerMixin, timesteps: torch.Tensor, num_inference_steps: int, denoising_end: float | None
) -> tuple[torch.Tensor, int]:
    """Keep only the timesteps at or above the `denoising_end` cut-off (SDXL base + refiner split).

    A `denoising_end` that is not a float in (0, 1) leaves the schedule unchanged.
    """
    if not _is_fraction(denoising_end):
        return timesteps, num_inference_steps
    n_train = scheduler.config.num_train_timesteps
    cutoff = int(round(n_train - (denoising_end * n_train)))
    steps = sum(1 for t in timesteps if t >= cutoff)
    return timesteps[:steps], steps


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Flux's `mu`: the time shift grows linearly with the number of image tokens."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b
