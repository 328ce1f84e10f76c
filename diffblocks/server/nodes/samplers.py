"""ComfyUI's `sampler_name` / `scheduler` choices mapped to our schedulers.

A KSampler's sampler picks the scheduler class (the solver), its scheduler picks the sigma/timestep schedule; the
scheduler is built with `from_config` from the checkpoint's own scheduler config (its betas, prediction type,
offsets) plus these settings. The names are ComfyUI's (comfy/samplers.py); the pairings follow the usual
k-diffusion <-> diffusers correspondence:

| sampler_name     | scheduler class                                         |
|------------------|---------------------------------------------------------|
| euler            | EulerDiscreteScheduler                                  |
| euler_ancestral  | EulerAncestralDiscreteScheduler                         |
| dpmpp_2m         | DPMSolverMultistepScheduler (dpmsolver++, order 2)      |
| dpmpp_2m_sde     | DPMSolverMultistepScheduler (sde-dpmsolver++, order 2)  |
| ddim             | DDIMScheduler                                           |
| ddpm             | DDPMScheduler                                           |
| uni_pc           | UniPCMultistepScheduler                                 |

| scheduler     | setting                                  | samplers                        |
|---------------|------------------------------------------|---------------------------------|
| normal        | timestep_spacing="linspace"              | all                             |
| simple        | timestep_spacing="trailing"              | all                             |
| sgm_uniform   | timestep_spacing="trailing"              | all                             |
| ddim_uniform  | timestep_spacing="leading"               | all                             |
| karras        | use_karras_sigmas=True                   | euler, dpmpp_2m(_sde), uni_pc   |
| exponential   | use_exponential_sigmas=True              | euler, dpmpp_2m(_sde), uni_pc   |

Flow-matching models (Flux) run `euler` with `simple` or `normal` on their own FlowMatchEulerDiscreteScheduler
config (ComfyUI's Flux workflows use exactly these). Other ComfyUI names (heun, lms, dpm_2, dpmpp_sde, lcm, beta,
...) have no scheduler here and are refused at validation. The schedules are the diffusers-style ones of our
schedulers, so images match `ModularPipeline` runs with the same scheduler, not ComfyUI's own k-diffusion
numerics.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SAMPLER_NAMES", "SCHEDULER_NAMES", "check_sampler", "make_scheduler"]

_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "uni_pc": ("UniPCMultistepScheduler", {}),
}
_SCHEDULES: dict[str, dict[str, Any]] = {
    "normal": {"timestep_spacing": "linspace"},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "simple": {"timestep_spacing": "trailing"},
    "ddim_uniform": {"timestep_spacing": "leading"},
}
_SIGMA_SCHEDULERS = {"EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"}
_FLOW_PAIRS = {("euler", "simple"), ("euler", "normal")}

SAMPLER_NAMES: list[str] = list(_SAMPLERS)
SCHEDULER_NAMES: list[str] = list(_SCHEDULES)


def check_sampler(sampler_name: str, scheduler: str) -> str | None:
    """None when the pair is supported, else why not (for validation)."""
    if sampler_name not in _SAMPLERS:
        return f"sampler_name {sampler_name!r} is not supported; supported: {SAMPLER_NAMES}"
    if scheduler not in _SCHEDULES:
        return f"scheduler {scheduler!r} is not supported; supported: {SCHEDULER_NAMES}"
    cls_name, _ = _SAMPLERS[sampler_name]
    if ("use_karras_sigmas" in _SCHEDULES[scheduler] or "use_exponential_sigmas" in _SCHEDULES[scheduler]) \
            and cls_name not in _SIGMA_SCHEDULERS:
        ok = [s for s, (c, _) in _SAMPLERS.items() if c in _SIGMA_SCHEDULERS]
        return (f"scheduler {scheduler!r} with sampler_name {sampler_name!r} is not supported ({cls_name} has no "
                f"{scheduler} sigmas); use it with one of {ok}, or pick scheduler 'normal'/'simple'")
    return None


def make_scheduler(sampler_name: str, scheduler: str, base: Any) -> Any:
    """The scheduler for a KSampler: `base` is the checkpoint's scheduler (its config gives betas, prediction
    type, offsets); flow-matching bases keep their class."""
    from ...components import schedulers

    problem = check_sampler(sampler_name, scheduler)
    if problem is not None:
        raise ValueError(problem)
    config = dict(base.config)
    if type(base).__name__ == "FlowMatchEulerDiscreteScheduler":
        if (sampler_name, scheduler) not in _FLOW_PAIRS:
            raise ValueError(f"this checkpoint is a flow-matching model (FlowMatchEulerDiscreteScheduler): "
                             f"sampler_name/scheduler must be one of {sorted(_FLOW_PAIRS)}, got "
                             f"({sampler_name!r}, {scheduler!r})")
        return type(base).from_config(config)
    cls_name, settings = _SAMPLERS[sampler_name]
    cls = getattr(schedulers, cls_name)
    return cls.from_config(config, **settings, **_SCHEDULES[scheduler])
