"""Loader nodes: CheckpointLoaderSimple, CLIPSetLastLayer, LoraLoader (ComfyUI's names, inputs and outputs).

Checkpoints are diffusers-format folders (with `model_index.json`) and single `.safetensors` files, found at the
top of `--models` and anywhere under `--models/checkpoints`; a name is the path relative to the folder it was found
in. Loading goes through `ModularPipeline.from_pretrained` / `from_single_file` with the engine's shared
ComponentsManager (collection `checkpoint:<name>`), so components already loaded are reused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .base import Node, ServerPaths, combo, float_spec, int_spec, socket
from .values import ClipHandle, ModelHandle, VaeHandle

logger = logging.getLogger(__name__)

__all__ = ["CLIPSetLastLayer", "CheckpointLoaderSimple", "LoraLoader", "checkpoint_names", "file_fingerprint", "lora_names",
           "model_files", "resolve_model_file"]


def model_files(paths: ServerPaths | None, kind: str, top_level: bool = True, folders: bool = True,
                marker: str = "model_index.json") -> dict[str, Path]:
    """name -> path of the models of one kind: under `<models>/<kind>` (recursively) and, when `top_level`, at the
    top of `<models>` itself. Diffusers folders (holding `marker`: model_index.json for pipelines, config.json for
    single models) when `folders`, and `.safetensors` files."""
    found: dict[str, Path] = {}
    if paths is None:
        return found
    roots = [(paths.models_dir / kind, True)] + ([(paths.models_dir, False)] if top_level else [])
    for root, recursive in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames.sort()
            for d in list(dirnames):
                if folders and (here / d / marker).is_file():
                    found.setdefault((here / d).relative_to(root).as_posix(), here / d)
                    dirnames.remove(d)  # a model folder's own files are not models
            for f in sorted(filenames):
                if f.endswith(".safetensors"):
                    found.setdefault((here / f).relative_to(root).as_posix(), here / f)
            if not recursive:
                break
    return found


def checkpoint_names(paths: ServerPaths | None) -> list[str]:
    return sorted(model_files(paths, "checkpoints"))


def lora_names(paths: ServerPaths | None) -> list[str]:
    return sorted(model_files(paths, "loras", top_level=False, folders=False))


def resolve_model_file(paths: ServerPaths | None, kind: str, name: str, **kw: Any) -> Path:
    """The path of a listed model; only names the listing offers resolve (nothing outside `--models`)."""
    found = model_files(paths, kind, **kw)
    if name not in found:
        raise FileNotFoundError(f"{kind} {name!r} not found under the models folder "
                                f"{paths.models_dir if paths else '(none)'}; available: {sorted(found)}")
    return found[name]


def file_fingerprint(path: Path) -> list:
    """What identifies a model file or folder's contents cheaply: its path, size and modification times."""
    stat = path.stat()
    if path.is_dir():
        newest = max((p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()), default=stat.st_mtime_ns)
        return [str(path), newest]
    return [str(path), stat.st_size, stat.st_mtime_ns]


def load_checkpoint(ctx: Any, name: str) -> Any:
    """A loaded ModularPipeline for a listed checkpoint (shared ComponentsManager)."""
    from ...runtime.pipeline import ModularPipeline

    path = resolve_model_file(ctx.paths, "checkpoints", name)
    collection = f"checkpoint:{name}"
    manager = ctx.components_manager
    if path.is_dir():
        pipe = ModularPipeline.from_pretrained(path, components_manager=manager, collection=collection)
        pipe.load_components()
    else:
        pipe = ModularPipeline.from_single_file(path, components_manager=manager, collection=collection)
    return pipe


class CheckpointLoaderSimple(Node):
    CATEGORY = "loaders"
    DISPLAY_NAME = "Load Checkpoint"
    DESCRIPTION = ("Loads a diffusion model checkpoint (a diffusers folder or a single .safetensors file under the "
                   "models folder); its denoiser, text encoders and VAE become MODEL, CLIP and VAE.")
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = ("The model used for denoising latents.", "The CLIP model used for encoding text prompts.",
                       "The VAE model used for encoding and decoding images to and from latent space.")

    @classmethod
    def input_types(cls, paths):
        return {"required": {"ckpt_name": combo(checkpoint_names(paths),
                                                tooltip="The name of the checkpoint (model) to load.")}}

    @classmethod
    def fingerprint(cls, inputs, paths):
        return file_fingerprint(resolve_model_file(paths, "checkpoints", inputs["ckpt_name"]))

    def run(self, ctx, ckpt_name):
        from ...presets.previews import latent_family

        pipe = load_checkpoint(ctx, ckpt_name)
        family = latent_family(pipe)
        missing = [n for n in ("vae",) if getattr(pipe, n, None) is None]
        if missing:
            logger.warning("checkpoint %s has no %s; VAE nodes fed from it will fail", ckpt_name, missing)
        return (ModelHandle(family, pipe, ckpt_name), ClipHandle(family, pipe, ckpt_name),
                VaeHandle(family, getattr(pipe, "vae", None), ckpt_name))


class CLIPSetLastLayer(Node):
    CATEGORY = "conditioning"
    DISPLAY_NAME = "CLIP Set Last Layer"
    DESCRIPTION = "Use the text encoder's hidden states from an earlier layer (-1: the last, -2: the one before)."
    RETURN_TYPES = ("CLIP",)

    @classmethod
    def input_types(cls, paths):
        return {"required": {"clip": socket("CLIP"), "stop_at_clip_layer": int_spec(-1, min=-24, max=-1)}}

    def run(self, ctx, clip, stop_at_clip_layer):
        # ComfyUI's -1 is the last layer; the presets' clip_skip counts layers skipped from the end
        return (clip.with_clip_skip(None if stop_at_clip_layer == -1 else -stop_at_clip_layer - 1),)


class LoraLoader(Node):
    CATEGORY = "loaders"
    DISPLAY_NAME = "Load LoRA"
    DESCRIPTION = ("Applies a LoRA (a .safetensors file under models/loras) to the model and the text encoders "
                   "with separate strengths; the input MODEL and CLIP stay unchanged for other branches.")
    RETURN_TYPES = ("MODEL", "CLIP")

    @classmethod
    def input_types(cls, paths):
        return {"required": {"model": socket("MODEL"), "clip": socket("CLIP"),
                             "lora_name": combo(lora_names(paths)),
                             "strength_model": float_spec(1.0, min=-100.0, max=100.0, step=0.01),
                             "strength_clip": float_spec(1.0, min=-100.0, max=100.0, step=0.01)}}

    @classmethod
    def fingerprint(cls, inputs, paths):
        return file_fingerprint(resolve_model_file(paths, "loras", inputs["lora_name"], top_level=False,
                                                    folders=False))

    def run(self, ctx, model, clip, lora_name, strength_model, strength_clip):
        from .adapters import ensure_lora

        path = resolve_model_file(ctx.paths, "loras", lora_name, top_level=False, folders=False)
        adapter = ensure_lora(model.pipe, path, lora_name)
        if clip.pipe is not model.pipe:
            ensure_lora(clip.pipe, path, lora_name)
        from dataclasses import replace

        return (replace(model, loras=model.loras + ((adapter, float(strength_model)),)),
                replace(clip, loras=clip.loras + ((adapter, float(strength_clip)),)))
