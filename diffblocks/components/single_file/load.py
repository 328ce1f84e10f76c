"""`Model.from_single_file`: one model out of an original-layout `.safetensors` file.

The config comes from `config=` (a dict, a model folder with `config.json`, or a pipeline folder / Hub repo whose
subfolder names the component) or, by default, from the standard config of the detected family shipped with the
package (`configs/`). The model is built on the meta device and filled tensor by tensor through the family's
conversion plan.
"""

from __future__ import annotations

import json
import logging
import os
from functools import cache
from importlib import resources
from typing import Any

import torch

from ..hub import resolve_file
from ..modeling import CheckpointError
from .convert_flux import flux_plan
from .convert_sd import controlnet_plan, unet_plan, vae_plan
from .detect import Detected, _context_dim, detect
from .plan import Plan, Source, load_into, model_shapes
from .reader import SingleFile

logger = logging.getLogger(__name__)

__all__ = ["model_from_single_file", "shipped_config", "family_components", "component_config", "load_model"]

# model class name -> the pipeline component name it is stored under
COMPONENT_OF_CLASS = {"UNet2DConditionModel": "unet", "AutoencoderKL": "vae", "ControlNetModel": "controlnet",
                      "FluxTransformer2DModel": "transformer"}


@cache
def _families() -> dict[str, dict[str, Any]]:
    return json.loads(resources.files(__package__).joinpath("configs/families.json").read_text())


def family_components(family: str) -> dict[str, Any]:
    """Component name -> shipped config name (or tokenizer subfolder; None: not shipped) for a family."""
    return {k: v for k, v in _families().get(family, {}).items() if not k.startswith("_")}


def family_pipeline_config(family: str) -> dict[str, Any]:
    return dict(_families().get(family, {}).get("_config", {}))


def shipped_config(name: str) -> dict[str, Any]:
    """A standard config shipped with the package (`configs/components/<name>.json`)."""
    path = resources.files(__package__).joinpath(f"configs/components/{name}.json")
    if not path.is_file():
        raise KeyError(f"no shipped config {name!r}")
    return json.loads(path.read_text())


def _shipped_name(detected: Detected, component: str, f: SingleFile) -> str | None:
    if detected.family.name == "controlnet":
        prefix = detected.components["controlnet"][1]
        return "sd21_controlnet" if _context_dim(f, prefix) == 1024 else "sd15_controlnet"
    return family_components(detected.family.name).get(component)


def component_config(component: str, config: str | os.PathLike | dict | None, detected: Detected,
                     f: SingleFile, config_name: str = "config.json") -> tuple[dict[str, Any], str]:
    """(config dict, where it came from) for `component`: `config=` or the family's shipped standard config."""
    if isinstance(config, dict):
        return dict(config), "the config dict passed"
    if config is not None:
        is_pipeline = resolve_file(config, "model_index.json", required=False) is not None
        path = resolve_file(config, config_name, subfolder=component if is_pipeline else None, required=False)
        if path is None and not is_pipeline:
            path = resolve_file(config, config_name, subfolder=component, required=False)
        if path is None:
            raise FileNotFoundError(
                f"config={str(config)!r} has no {config_name} for the {component} (looked in the folder itself and "
                f"in its {component!r} subfolder). Pass a diffusers-format pipeline folder / repo or a model folder."
            )
        return json.loads(path.read_text()), str(path)
    name = _shipped_name(detected, component, f)
    if name is None:
        raise CheckpointError(
            f"No standard {component} config is shipped for {detected.family.title}; pass config= a diffusers-format "
            f"folder or repo (e.g. {detected.family.default_repo!r})."
        )
    return shipped_config(name), f"the shipped standard config {name!r} ({detected.family.title})"


def _plan(component: str, layout: str, prefix: str, shapes: dict[str, tuple[int, ...]], config: dict) -> Plan:
    if layout == "diffusers":
        return {k: Source(prefix + k) for k in shapes}
    if component == "unet":
        return unet_plan(shapes, config, prefix)
    if component == "vae":
        return vae_plan(shapes, config, prefix)
    if component == "controlnet":
        return controlnet_plan(shapes, config, prefix)
    if component == "transformer":
        return flux_plan(shapes, config, prefix)
    raise ValueError(f"no single-file conversion for component {component!r}")


def load_model(cls: type, f: SingleFile, detected: Detected, component: str, config: Any,
               torch_dtype: torch.dtype | None, overrides: dict[str, Any]) -> tuple[Any, set[str]]:
    """Build `cls` for `component` of an open, detected file; returns (model, file keys used)."""
    from accelerate import init_empty_weights

    if component not in detected.components:
        held = sorted(detected.components) or ["nothing loadable"]
        raise CheckpointError(
            f"{f.path} ({detected.family.title}) holds no {component}: it holds {held}. Load the {component} from "
            "another file or folder."
        )
    layout, prefix = detected.components[component]
    values, origin = component_config(component, config, detected, f)
    unknown = set(overrides) - set(cls.init_parameter_names())
    if unknown:
        raise TypeError(f"{cls.__name__}.from_single_file got unknown arguments {sorted(unknown)}.")
    with init_empty_weights(include_buffers=False):
        model = cls.from_config(values, **overrides)
    plan = _plan(component, layout, prefix, model_shapes(model), dict(model.config))
    hint = (f"The file looks like {detected.family.title}; its config came from {origin}. If that config describes "
            "another model (family/config mismatch), pass config= the folder or repo this file was trained from.")
    used = load_into(model, f, plan, torch_dtype or torch.get_default_dtype(), component, hint=hint)
    if torch_dtype is not None:
        model.to(torch_dtype)
    model.eval()
    return model, used


def model_from_single_file(cls: type, path: str | os.PathLike, config: Any = None,
                           torch_dtype: torch.dtype | None = None, **overrides: Any):
    """`cls` (one of our models) from a single-file checkpoint; see the module docstring."""
    component = COMPONENT_OF_CLASS.get(cls.__name__)
    if component is None:
        raise TypeError(f"{cls.__name__} has no single-file loader; supported: {sorted(COMPONENT_OF_CLASS)}")
    with SingleFile(path) as f:
        detected = detect(f)
        model, _ = load_model(cls, f, detected, component, config, torch_dtype, overrides)
    model._diffblocks_single_file = str(path)
    return model
