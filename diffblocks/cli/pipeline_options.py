"""Options that shape the pipeline a command runs: device, dtype, scheduler (+ Karras sigmas), ControlNet.

Shared by `generate` and any command that loads a model folder (add them with `add_arguments`, build with
`load_pipeline`).
"""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass
from typing import Any

__all__ = ["DTYPES", "SCHEDULERS", "SchedulerChoice", "add_arguments", "load_pipeline", "resolve_device",
           "parse_lora", "resolve_dtype", "sampler_name"]


@dataclass(frozen=True)
class SchedulerChoice:
    class_name: str
    overrides: tuple[tuple[str, Any], ...] = ()
    a1111: str = ""  # the sampler's name in A1111-style `parameters` text (what other tools read)


# `--scheduler` names -> our scheduler classes (with config overrides)
SCHEDULERS: dict[str, SchedulerChoice] = {
    "euler": SchedulerChoice("EulerDiscreteScheduler", a1111="Euler"),
    "euler_a": SchedulerChoice("EulerAncestralDiscreteScheduler", a1111="Euler a"),
    "ddim": SchedulerChoice("DDIMScheduler", a1111="DDIM"),
    "ddpm": SchedulerChoice("DDPMScheduler", a1111="DDPM"),
    "pndm": SchedulerChoice("PNDMScheduler", a1111="PLMS"),
    "dpm++2m": SchedulerChoice("DPMSolverMultistepScheduler", (("algorithm_type", "dpmsolver++"),), "DPM++ 2M"),
    "dpm++2m_sde": SchedulerChoice("DPMSolverMultistepScheduler", (("algorithm_type", "sde-dpmsolver++"),),
                                   "DPM++ 2M SDE"),
    "unipc": SchedulerChoice("UniPCMultistepScheduler", a1111="UniPC"),
    "flow_euler": SchedulerChoice("FlowMatchEulerDiscreteScheduler", a1111="Euler"),
}

DTYPES = ("fp16", "bf16", "fp32")


def sampler_name(scheduler: Any) -> str:
    """The A1111 sampler name of a scheduler object (its class name when there is none)."""
    cls = type(scheduler).__name__
    algorithm = getattr(getattr(scheduler, "config", None), "algorithm_type", None)
    for choice in SCHEDULERS.values():
        if choice.class_name == cls and dict(choice.overrides).get("algorithm_type", algorithm) == algorithm:
            return choice.a1111
    return cls


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="where the models run: cuda, cuda:1, cpu, mps (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="model weights' precision (default: fp16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), default=None,
                        help="sampler, built from the model's scheduler config (default: the model's own scheduler)")
    parser.add_argument("--karras", action="store_true",
                        help="Karras noise levels (use_karras_sigmas) for the scheduler (default: off)")
    parser.add_argument("--controlnet", metavar="PATH", default=None,
                        help="ControlNet folder or Hub repo (diffusers format); needs --control-image (default: none)")
    parser.add_argument("--control-image", dest="control_image", metavar="FILE", default=None,
                        help="conditioning image for --controlnet, e.g. an edge map (default: none)")
    parser.add_argument("--lora", action="append", metavar="PATH[:SCALE]", default=None, type=parse_lora,
                        help="LoRA file, folder or Hub repo (diffusers/peft or kohya layout) with an optional scale; "
                             "repeat for several (default: none; scale 1.0)")


def parse_lora(value: str) -> tuple[str, float]:
    """`PATH[:SCALE]` -> (path, scale); a Windows drive letter or a colon in a name is not a scale."""
    path, sep, scale = value.rpartition(":")
    if sep and path:
        try:
            return path, float(scale)
        except ValueError:
            pass
    return value, 1.0


def resolve_device(requested: str | None) -> str:
    if requested is None:
        return "cuda" if _cuda_available() else "cpu"
    if requested.startswith("cuda") and not _cuda_available():
        raise SystemExit(f"diffblocks: --device {requested}, but this torch has no CUDA device; use --device cpu")
    return requested


def resolve_dtype(requested: str | None, device: str) -> Any:
    import torch

    name = requested or ("fp16" if device.startswith("cuda") else "fp32")
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def check_arguments(args: argparse.Namespace) -> None:
    """Combinations argparse cannot check: exit with a message naming the options."""
    if bool(args.controlnet) != bool(args.control_image):
        raise SystemExit("diffblocks generate: --controlnet and --control-image go together (the ControlNet and the "
                         "image that conditions it)")
    if args.karras and args.scheduler is not None:
        class_name = SCHEDULERS[args.scheduler].class_name
        if not _has_karras(class_name):
            raise SystemExit(f"diffblocks generate: --karras: the {args.scheduler} scheduler ({class_name}) has no "
                             f"Karras sigmas; use one of "
                             f"{sorted(n for n, c in SCHEDULERS.items() if _has_karras(c.class_name))}")


def _scheduler_class(name: str) -> type:
    from ..components import schedulers

    return getattr(schedulers, name)


def _has_karras(class_name: str) -> bool:
    return "use_karras_sigmas" in inspect.signature(_scheduler_class(class_name).__init__).parameters


def _swap_scheduler(pipe: Any, name: str | None, karras: bool) -> None:
    current = pipe.scheduler
    if current is None:
        raise SystemExit("diffblocks generate: the model has no scheduler to configure (--scheduler/--karras)")
    if name is None:
        cls, overrides = type(current), {}
        if karras and not _has_karras(cls.__name__):
            raise SystemExit(f"diffblocks generate: --karras: the model's scheduler {cls.__name__} has no Karras "
                             "sigmas; pick one with --scheduler")
    else:
        choice = SCHEDULERS[name]
        cls, overrides = _scheduler_class(choice.class_name), dict(choice.overrides)
    if karras:
        overrides["use_karras_sigmas"] = True
    pipe.update_components(scheduler=cls.from_config(current.config, **overrides))


def load_pipeline(args: argparse.Namespace, device: str, dtype: Any) -> Any:
    """The pipeline of `args.model` with its components on `device` in `dtype`, the scheduler and ControlNet
    the options ask for."""
    from ..runtime.pipeline import ModularPipeline

    if str(args.model).endswith(".safetensors"):  # a single-file checkpoint (LDM / BFL layout)
        pipe = ModularPipeline.from_single_file(args.model, config=getattr(args, "config", None), torch_dtype=dtype)
    else:
        pipe = ModularPipeline.from_pretrained(args.model)
        pipe.load_components(torch_dtype=dtype)
    if args.scheduler is not None or args.karras:
        _swap_scheduler(pipe, args.scheduler, args.karras)
    if args.controlnet:
        if "controlnet" not in pipe.component_names:
            raise SystemExit(f"diffblocks generate: --controlnet: the {type(pipe.blocks).__name__} preset of "
                             f"{args.model} has no ControlNet step")
        from ..components.models import ControlNetModel

        pipe.update_components(controlnet=ControlNetModel.from_pretrained(args.controlnet, torch_dtype=dtype))
    if args.lora:
        names = [pipe.load_lora_weights(path, adapter_name=f"lora_{i}") for i, (path, _) in enumerate(args.lora)]
        pipe.set_adapters(names, adapter_weights=[scale for _, scale in args.lora])
    return pipe.to(device)
