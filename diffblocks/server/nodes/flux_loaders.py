"""Separate-file loaders of ComfyUI's Flux workflows: UNETLoader, DualCLIPLoader, VAELoader.

- UNETLoader: a Flux transformer from `--models/diffusion_models` (or the older `--models/unet`): a diffusers
  folder (config.json) or a single `.safetensors` file (BFL / diffusers layout, `FluxTransformer2DModel.
  from_single_file`). Its scheduler is FLUX.1's own FlowMatchEulerDiscreteScheduler config (dev when the
  transformer has the guidance embedding, schnell otherwise), shipped with the single-file loader.
- DualCLIPLoader (`type` "flux"): CLIP-L and T5 from `--models/text_encoders`, each a transformers folder with its
  tokenizer files (config.json + weights + tokenizer); either order. A bare `.safetensors` text encoder is
  refused: it has no tokenizer, and none can be downloaded here.
- VAELoader: a VAE from `--models/vae`, a diffusers folder or a single file (`AutoencoderKL.from_single_file`).

The MODEL and CLIP they return are Flux pipelines (`FluxAutoBlocks`) holding just those components, registered in
the engine's ComponentsManager, so the core nodes treat them like a checkpoint's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .base import Node, combo
from .loaders import file_fingerprint, model_files
from .values import ClipHandle, ModelHandle, VaeHandle

__all__ = ["DualCLIPLoader", "UNETLoader", "VAELoader"]

_FOLDER = dict(top_level=False, marker="config.json")


def _files(paths: Any, *kinds: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for kind in kinds:
        for name, path in model_files(paths, kind, **_FOLDER).items():
            found.setdefault(name, path)
    return found


def _resolve(paths: Any, kinds: tuple[str, ...], name: str) -> Path:
    found = _files(paths, *kinds)
    if name not in found:
        raise FileNotFoundError(f"{name!r} not found under {[str(paths.models_dir / k) for k in kinds]}; available: "
                                f"{sorted(found)}")
    return found[name]


def _flux_pipeline(ctx: Any, collection: str, **components: Any) -> Any:
    from ...presets.flux import FluxAutoBlocks

    pipe = FluxAutoBlocks().init_pipeline(components_manager=ctx.components_manager, collection=collection)
    pipe.update_components(**components)
    return pipe


class UNETLoader(Node):
    CATEGORY = "advanced/loaders"
    DISPLAY_NAME = "Load Diffusion Model"
    DESCRIPTION = ("Loads a Flux transformer (a diffusers folder or a single .safetensors file under "
                   "models/diffusion_models) as MODEL, with FLUX.1's scheduler.")
    RETURN_TYPES = ("MODEL",)

    @classmethod
    def input_types(cls, paths):
        return {"required": {"unet_name": combo(sorted(_files(paths, "diffusion_models", "unet"))),
                             "weight_dtype": combo(["default"])}}

    @classmethod
    def fingerprint(cls, inputs, paths):
        return file_fingerprint(_resolve(paths, ("diffusion_models", "unet"), inputs["unet_name"]))

    def run(self, ctx, unet_name, weight_dtype="default"):
        from ...components.models import FluxTransformer2DModel
        from ...components.schedulers import FlowMatchEulerDiscreteScheduler
        from ...components.single_file.load import shipped_config

        path = _resolve(ctx.paths, ("diffusion_models", "unet"), unet_name)
        if path.is_dir():
            config = json.loads((path / "config.json").read_text())
            if config.get("_class_name") not in (None, "FluxTransformer2DModel"):
                raise ValueError(f"UNETLoader loads Flux transformers; {unet_name} is a {config.get('_class_name')} "
                                 f"(load SD / SDXL models with CheckpointLoaderSimple)")
            transformer = FluxTransformer2DModel.from_pretrained(str(path))
        else:
            transformer = FluxTransformer2DModel.from_single_file(str(path))
        transformer.eval()
        variant = "flux_dev_scheduler" if transformer.config.guidance_embeds else "flux_schnell_scheduler"
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(shipped_config(variant))
        pipe = _flux_pipeline(ctx, f"diffusion_model:{unet_name}", transformer=transformer, scheduler=scheduler)
        return (ModelHandle("flux", pipe, unet_name),)


def _text_encoder(path: Path) -> tuple[str, Any, Any]:
    """('clip' | 't5', model, tokenizer) from a transformers folder."""
    if not path.is_dir():
        raise ValueError(f"{path.name}: a text encoder needs its tokenizer; give a transformers folder (config.json, "
                         f"weights and tokenizer files), not a bare .safetensors file")
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type in ("clip_text_model", "clip"):
        from transformers import CLIPTextModel, CLIPTokenizer

        return "clip", CLIPTextModel.from_pretrained(str(path)).eval(), CLIPTokenizer.from_pretrained(str(path))
    if model_type in ("t5", "t5encoder"):
        from transformers import T5EncoderModel, T5TokenizerFast

        return "t5", T5EncoderModel.from_pretrained(str(path)).eval(), T5TokenizerFast.from_pretrained(str(path))
    raise ValueError(f"{path.name}: model_type {model_type!r} is not a Flux text encoder (CLIP-L 'clip_text_model' "
                     f"or T5 't5')")


class DualCLIPLoader(Node):
    CATEGORY = "advanced/loaders"
    DISPLAY_NAME = "DualCLIPLoader"
    DESCRIPTION = ("Loads Flux's two text encoders, CLIP-L and T5 (transformers folders with their tokenizers under "
                   "models/text_encoders, in either order) as CLIP.")
    RETURN_TYPES = ("CLIP",)

    @classmethod
    def input_types(cls, paths):
        names = sorted(_files(paths, "text_encoders", "clip"))
        return {"required": {"clip_name1": combo(names), "clip_name2": combo(names), "type": combo(["flux"])}}

    @classmethod
    def fingerprint(cls, inputs, paths):
        return [file_fingerprint(_resolve(paths, ("text_encoders", "clip"), inputs[k]))
                for k in ("clip_name1", "clip_name2")]

    def run(self, ctx, clip_name1, clip_name2, type="flux"):
        loaded = {}
        for name in (clip_name1, clip_name2):
            kind, model, tokenizer = _text_encoder(_resolve(ctx.paths, ("text_encoders", "clip"), name))
            loaded[kind] = (model, tokenizer)
        if set(loaded) != {"clip", "t5"}:
            raise ValueError(f"DualCLIPLoader type 'flux' needs one CLIP-L and one T5 encoder, got "
                             f"{clip_name1!r} and {clip_name2!r} ({sorted(loaded)})")
        pipe = _flux_pipeline(ctx, f"text_encoders:{clip_name1}+{clip_name2}",
                              text_encoder=loaded["clip"][0], tokenizer=loaded["clip"][1],
                              text_encoder_2=loaded["t5"][0], tokenizer_2=loaded["t5"][1])
        return (ClipHandle("flux", pipe, f"{clip_name1}+{clip_name2}"),)


class VAELoader(Node):
    CATEGORY = "loaders"
    DISPLAY_NAME = "Load VAE"
    DESCRIPTION = "Loads a VAE (a diffusers folder or a single .safetensors file under models/vae)."
    RETURN_TYPES = ("VAE",)

    @classmethod
    def input_types(cls, paths):
        return {"required": {"vae_name": combo(sorted(_files(paths, "vae")))}}

    @classmethod
    def fingerprint(cls, inputs, paths):
        return file_fingerprint(_resolve(paths, ("vae",), inputs["vae_name"]))

    def run(self, ctx, vae_name):
        from ...components.models import AutoencoderKL

        path = _resolve(ctx.paths, ("vae",), vae_name)
        vae = AutoencoderKL.from_pretrained(str(path)) if path.is_dir() else AutoencoderKL.from_single_file(str(path))
        vae.eval()
        ctx.components_manager.add("vae", vae, f"vae:{vae_name}")
        if vae.config.latent_channels == 16:
            return (VaeHandle("flux", vae, vae_name),)
        return (VaeHandle("sd", vae, vae_name, exact=False),)  # SD and SDXL VAEs share their blocks
