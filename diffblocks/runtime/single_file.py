"""`ModularPipeline.from_single_file`: a whole pipeline from one original-layout checkpoint file.

The family detected from the file's keys picks the preset (SD, SDXL, Flux). Every component the file holds is
converted (UNet or transformer, VAE, CLIP / OpenCLIP text encoders); the rest come from `config=` (a
diffusers-format folder or repo) or, without one, from the package's shipped standard configs (schedulers) and
the local Hub cache of the family's published repo (tokenizers, which are not shipped). Whatever is still
missing is left empty with a warning that names it and how to supply it (`update_components`).
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import TYPE_CHECKING, Any

import torch

from ..components.modeling import CheckpointError
from ..components.single_file.detect import Detected, detect
from ..components.single_file.load import (
    component_config,
    family_components,
    family_pipeline_config,
    load_model,
    shipped_config,
)
from ..components.single_file.plan import unused_keys
from ..components.single_file.reader import SingleFile
from ..components.single_file.text_encoders import load_text_encoder
from ..components.spec import ComponentSpec

if TYPE_CHECKING:
    from .pipeline import ModularPipeline

logger = logging.getLogger(__name__)

__all__ = ["pipeline_from_single_file", "MODEL_CLASSES"]

MODEL_CLASSES = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "transformer": "FluxTransformer2DModel",
                 "controlnet": "ControlNetModel"}
_TEXT_ENCODER_CLASSES = {("sd", "text_encoder"): "CLIPTextModel", ("sdxl", "text_encoder"): "CLIPTextModel",
                         ("sdxl", "text_encoder_2"): "CLIPTextModelWithProjection"}
# tensors original checkpoints carry that no diffusers component uses (training state, the unused SD 2 projection)
_IGNORED = ("model_ema.", "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_", "log_one_minus_",
            "posterior_", "logvar", "global_step", "cond_stage_model.model.text_projection",
            "cond_stage_model.model.logit_scale", "conditioner.embedders.1.model.logit_scale",
            "conditioner.embedders.0.model.logit_scale", "cond_stage_model.transformer.text_model.embeddings.position_ids",
            "conditioner.embedders.0.transformer.text_model.embeddings.position_ids", "denoiser.")
_PRESET_OF_CLASS = {"StableDiffusion": "sd", "StableDiffusionXL": "sdxl", "Flux": "flux"}


def _model_class(component: str) -> type:
    from ..components import models

    return getattr(models, MODEL_CLASSES[component])


def _preset_of_pipeline_class(name: str | None) -> str | None:
    if not name:
        return None
    for prefix in sorted(_PRESET_OF_CLASS, key=len, reverse=True):
        if name.startswith(prefix):
            return _PRESET_OF_CLASS[prefix]
    return None


def _check_config_family(detected: Detected, config: Any, standard: dict[str, Any] | None) -> None:
    preset = _preset_of_pipeline_class((standard or {}).get("_class_name"))
    if preset is not None and preset != detected.family.preset:
        raise CheckpointError(
            f"family/config mismatch: the file holds {detected.family.title} (the {detected.family.preset!r} preset) "
            f"but config={str(config)!r} is a {standard['_class_name']} folder. Pass the folder or repo of the "
            f"model this file belongs to (e.g. {detected.family.default_repo!r})."
        )


def _text_encoder(f: SingleFile, detected: Detected, name: str, config: Any, torch_dtype: torch.dtype | None):
    import transformers

    layout, prefix = detected.components[name]
    class_name = _TEXT_ENCODER_CLASSES.get((detected.family.preset, name), "CLIPTextModel")
    if config is not None:
        values, _ = component_config(name, config, detected, f)
        class_name = (values.get("architectures") or [class_name])[0]
    else:
        values = shipped_config(family_components(detected.family.name)[name])
        class_name = values.pop("_class_name", class_name)
    cls = getattr(transformers, class_name)
    te_config = cls.config_class(**{k: v for k, v in values.items() if not k.startswith("_")})
    return load_text_encoder(f, layout, prefix, cls, te_config, torch_dtype, name)


def _scheduler(detected: Detected, prediction_type: str | None):
    from ..components import schedulers

    values = shipped_config(family_components(detected.family.name)["scheduler"])
    cls = getattr(schedulers, values.pop("_class_name"))
    return cls.from_config(values, **({"prediction_type": prediction_type} if prediction_type else {}))


def _cached_tokenizer(detected: Detected, subfolder: str):
    """A tokenizer from the local Hub cache of the family's published repo (no download), or None."""
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(detected.family.default_repo, subfolder=subfolder, local_files_only=True)
    except (OSError, ValueError):
        return None


def _remember(obj: Any, name: str, path: str) -> Any:
    spec = ComponentSpec(name=name, type_hint=type(obj), pretrained_model_name_or_path=path, subfolder=name)
    obj._diffblocks_spec = spec
    obj._diffblocks_load_id = spec.load_id
    return obj


def pipeline_from_single_file(
    cls: type[ModularPipeline],
    path: str | os.PathLike,
    config: str | os.PathLike | None = None,
    torch_dtype: torch.dtype | None = None,
    components_manager: Any = None,
    collection: str | None = None,
    prediction_type: str | None = None,
    upcast_attention: bool | None = None,
    **components: Any,
) -> ModularPipeline:
    from ..presets import STANDARD_PIPELINES
    from .serialization import read_index

    if prediction_type not in (None, "epsilon", "v_prediction", "sample"):
        raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', not {prediction_type!r}")
    path = str(path)
    with SingleFile(path) as f:
        detected = detect(f)
        family = detected.family
        if not family.preset:
            model = MODEL_CLASSES[next(iter(detected.components))]
            raise CheckpointError(
                f"{path} holds a lone {family.title}, not a pipeline. Load it with {model}.from_single_file(path"
                f"{', config=...' if family.name == 'controlnet' else ''}) and pass it to a pipeline, e.g. "
                f"ModularPipeline.from_single_file('base.safetensors', {next(iter(detected.components))}=model)."
            )
        for note in detected.notes:
            logger.info("%s: %s", path, note)
        standard = None
        if config is not None:
            index, standard = read_index(config)
            if index is None:
                raise FileNotFoundError(f"config={str(config)!r} is not a diffusers-format folder or repo "
                                        "(no model_index.json or modular_model_index.json).")
            _check_config_family(detected, config, standard)
        module_name, blocks_name = STANDARD_PIPELINES[family.pipeline_class]
        blocks = getattr(importlib.import_module(module_name), blocks_name)()
        if config is not None:
            pipe = cls(blocks, str(config), components_manager=components_manager, collection=collection, index=index)
        else:
            pipe = blocks.init_pipeline(components_manager=components_manager, collection=collection)
            pipe.update_components(**{k: v for k, v in family_pipeline_config(family.name).items()
                                       if k in pipe._config_specs})
        built: dict[str, Any] = {}
        used: set[str] = set()
        for name in detected.components:
            if name in components or name not in pipe.component_names:
                continue
            if name in MODEL_CLASSES:
                overrides = {"upcast_attention": upcast_attention} if name == "unet" and upcast_attention is not None else {}
                obj, keys = load_model(_model_class(name), f, detected, name, config, torch_dtype, overrides)
            else:
                obj, keys = _text_encoder(f, detected, name, config, torch_dtype)
            built[name] = _remember(obj, name, path)
            used |= keys
        leftover = unused_keys(f, used, _IGNORED)
        if leftover:
            logger.warning("%s: %d tensors of the file belong to no component and were not read (e.g. %s)",
                           path, len(leftover), leftover[:5])
    pipe.update_components(**built)
    if config is not None:
        wanted = [n for n in pipe.null_component_names if n not in components
                  and pipe._specs[n].default_creation_method == "from_pretrained" and pipe._specs[n].pretrained_model_name_or_path]
        if wanted:
            pipe.load_components(wanted, **({"torch_dtype": torch_dtype} if torch_dtype is not None else {}))
        if prediction_type is not None and getattr(pipe, "scheduler", None) is not None:
            pipe.update_components(scheduler=type(pipe.scheduler).from_config(pipe.scheduler.config,
                                                                                 prediction_type=prediction_type))
    else:
        shipped = family_components(family.name)
        extra: dict[str, Any] = {}
        if "scheduler" in pipe.component_names and "scheduler" not in components:
            extra["scheduler"] = _scheduler(detected, prediction_type)
        for name in ("tokenizer", "tokenizer_2"):
            subfolder = shipped.get(name)
            if name in pipe.component_names and name not in components and subfolder:
                tokenizer = _cached_tokenizer(detected, subfolder)
                if tokenizer is not None:
                    extra[name] = tokenizer
        pipe.update_components(**extra)
    if components:
        pipe.update_components(**components)
    optional = {"controlnet"}
    missing = [n for n in pipe.null_component_names
               if pipe._specs[n].default_creation_method == "from_pretrained" and n not in optional]
    if missing:
        logger.warning(
            "%s (%s) does not provide %s%s. Supply them with pipe.update_components(%s) or pass config= a "
            "diffusers-format folder or repo holding them (e.g. config=%r; tokenizers cannot ship with diffblocks).",
            path, family.title, missing, "" if config is None else f" and config={str(config)!r} has none",
            ", ".join(f"{n}=..." for n in missing), family.default_repo,
        )
    return pipe


# -- writing a standard diffusers folder ----------------------------------------------------------------------------
# components the reference's pipeline classes declare that single files never hold (written as [null, null])
_OPTIONAL_STANDARD = {
    "sd": {"safety_checker": [None, None], "feature_extractor": [None, None], "image_encoder": [None, None],
           "requires_safety_checker": False},
    "sdxl": {"feature_extractor": [None, None], "image_encoder": [None, None]},
    "flux": {"feature_extractor": [None, None], "image_encoder": [None, None]},
}


def _library_of(obj: Any) -> str:
    module = type(obj).__module__.split(".")[0]
    return "diffusers" if module == "diffblocks" else module


def convert_single_file(path: str | os.PathLike, out_dir: str | os.PathLike, config: str | os.PathLike | None = None,
                        torch_dtype: torch.dtype | None = None, **kwargs: Any) -> list[str]:
    """Write a single-file checkpoint as the standard diffusers folder (model_index.json + one subfolder per
    component; a lone ControlNet / VAE file becomes a model folder). Returns the components missing from it."""
    import json
    from pathlib import Path

    from .pipeline import ModularPipeline

    out = Path(out_dir)
    with SingleFile(path) as f:
        detected = detect(f)
    if not detected.family.preset:
        component = next(iter(detected.components))
        model = _model_class(component).from_single_file(path, config=config, torch_dtype=torch_dtype)
        model.save_pretrained(out)
        return []
    pipe = ModularPipeline.from_single_file(path, config=config, torch_dtype=torch_dtype, **kwargs)
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": detected.family.pipeline_class, "_diffusers_version": "0.30.0",
                             **_OPTIONAL_STANDARD.get(detected.family.preset, {})}
    index.update({k: v for k, v in pipe._config_values.items() if v is not None})
    missing = []
    for name, spec in pipe._specs.items():
        if spec.default_creation_method != "from_pretrained" or name == "controlnet":
            continue
        obj = pipe.components.get(name)
        if obj is None:
            index[name] = [None, None]
            missing.append(name)
            continue
        obj.save_pretrained(str(out / name))
        index[name] = [_library_of(obj), type(obj).__name__]
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return missing
