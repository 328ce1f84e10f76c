"""Noise schedulers: the samplers the denoise loop steps with, loadable from `scheduler_config.json`."""

from .base import SchedulerMixin, SchedulerOutput, randn_tensor
from .ddim import DDIMScheduler, PNDMScheduler
from .ddpm import DDPMScheduler
from .dpm_solver import DPMSolverMultistepScheduler
from .euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from .flow_match import FlowMatchEulerDiscreteScheduler
from .timesteps import calculate_shift, denoising_end_timesteps, img2img_timesteps, retrieve_timesteps
from .unipc import UniPCMultistepScheduler

__all__ = [
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "PNDMScheduler",
    "SchedulerMixin",
    "SchedulerOutput",
    "UniPCMultistepScheduler",
    "calculate_shift",
    "denoising_end_timesteps",
    "img2img_timesteps",
    "randn_tensor",
    "retrieve_timesteps",
]
