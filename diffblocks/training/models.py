"""The components a training run works on: loaded from a diffusers-format folder, written back as one."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..components.hub import check_local_tree, is_local
from .config import TrainingConfig, TrainingConfigError

__all__ = ["DEFAULT_RESOLUTION", "TrainingModels", "load_training_models", "model_family", "resolve_model_folder",
           "write_model_folder"]

logger = logging.getLogger(__name__)

# model_index.json `_class_name` -> the family whose training-step graph runs on it
SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionModularPipeline")
SDXL_PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                  "StableDiffusionXLModularPipeline")
SUPPORTED_PIPELINES = SD_PIPELINES + SDXL_PIPELINES
DEFAULT_RESOLUTION = {"sd": 512, "sdxl": 1024}  # the reference scripts' defaults


@dataclass
class TrainingModels:
    folder: Path
    model_index: dict[str, Any]
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    guider: Any
    image_processor: Any
    family: str = "sd"
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    vae_folder: Path | None = None  # --pretrained_vae_model_name_or_path, when given

    @property
    def text_encoders(self) -> dict[str, Any]:
        """The text encoders present, by component name (SDXL: both)."""
        return {name: model for name, model in (("text_encoder", self.text_encoder),
                                                ("text_encoder_2", self.text_encoder_2)) if model is not None}


def _local_folder(name: str, config: TrainingConfig, option: str) -> Path:
    if is_local(name):
        return Path(name)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=config.revision, cache_dir=config.cache_dir))
    except Exception as exc:  # noqa: BLE001 - every Hub failure is the same user error here
        raise TrainingConfigError(f"{option}={name!r} is neither a local folder nor a reachable Hub repo "
                                  f"({type(exc).__name__}: {exc}).") from None


def resolve_model_folder(config: TrainingConfig) -> Path:
    """A local folder for `--pretrained_model_name_or_path` (a Hub repo is downloaded into the cache)."""
    name = config.pretrained_model_name_or_path
    folder = _local_folder(name, config, "--pretrained_model_name_or_path")
    if not (folder / "model_index.json").is_file():
        raise TrainingConfigError(f"--pretrained_model_name_or_path={name!r}: no model_index.json; training needs "
                                  "a diffusers-format SD 1.x/2.x or SDXL folder or repo (unet/, vae/, "
                                  "text_encoder/, tokenizer/, scheduler/; SDXL also text_encoder_2/, tokenizer_2/).")
    return folder


def model_family(folder: Path, index: dict[str, Any] | None = None) -> str:
    """'sd' or 'sdxl' from model_index.json's `_class_name`; a clear error for anything training cannot run."""
    index = index if index is not None else json.loads((folder / "model_index.json").read_text())
    cls = index.get("_class_name")
    if cls in SD_PIPELINES:
        return "sd"
    if cls in SDXL_PIPELINES:
        return "sdxl"
    raise TrainingConfigError(f"--pretrained_model_name_or_path: a {cls} model; training supports SD 1.x/2.x "
                              f"({', '.join(SD_PIPELINES[:2])}) and SDXL ({', '.join(SDXL_PIPELINES[:2])}) folders.")


def load_training_models(config: TrainingConfig, device: torch.device | str = "cpu") -> TrainingModels:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from ..components.image_processor import VaeImageProcessor
    from ..components.models import AutoencoderKL, UNet2DConditionModel
    from ..components.schedulers import DDPMScheduler
    from ..guiders import ClassifierFreeGuidance

    folder = resolve_model_folder(config)
    index = json.loads((folder / "model_index.json").read_text())
    family = model_family(folder, index)
    present = {k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None}
    needed = {"unet", "vae", "tokenizer", "scheduler"} | ({"text_encoder", "text_encoder_2", "tokenizer_2"}
                                                         if family == "sdxl" else set())
    missing = needed - present
    if missing:
        what = " (an SDXL refiner has no text_encoder/tokenizer: train the base model)" if family == "sdxl" else ""
        raise TrainingConfigError(f"--pretrained_model_name_or_path={str(folder)!r}: model_index.json has no "
                                  f"{sorted(missing)} component(s), which training needs{what}.")
    kw = {"variant": config.variant}
    unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", **kw)
    if family == "sdxl" and unet.config.addition_embed_type != "text_time":
        raise TrainingConfigError(f"--pretrained_model_name_or_path={str(folder)!r}: an SDXL model whose UNet has "
                                  f"addition_embed_type={unet.config.addition_embed_type!r}; SDXL training needs "
                                  "'text_time' (original size, crop and target size conditioning).")
    vae_folder = None
    if config.pretrained_vae_model_name_or_path:
        vae_folder = _local_folder(config.pretrained_vae_model_name_or_path, config,
                                   "--pretrained_vae_model_name_or_path")
        vae = AutoencoderKL.from_pretrained(str(vae_folder), **kw)
    else:
        vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", **kw)
    encoders: dict[str, Any] = {}
    for name, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        check_local_tree(str(folder), name)  # transformers reads these folders itself: keep them inside
        check_local_tree(str(folder), name.replace("text_encoder", "tokenizer"))
        encoders[name] = cls.from_pretrained(str(folder), subfolder=name, **kw) if name in present else None
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer_2") if family == "sdxl" else None
    scheduler = DDPMScheduler.from_pretrained(str(folder), subfolder="scheduler")
    if config.prediction_type is not None:
        scheduler = DDPMScheduler.from_config(scheduler.config, prediction_type=config.prediction_type)
    return TrainingModels(
        folder=folder, model_index=index, unet=unet, vae=vae, text_encoder=encoders["text_encoder"],
        tokenizer=tokenizer, noise_scheduler=scheduler, guider=ClassifierFreeGuidance(guidance_scale=1.0),
        image_processor=VaeImageProcessor(vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1)),
        family=family, text_encoder_2=encoders["text_encoder_2"], tokenizer_2=tokenizer_2, vae_folder=vae_folder)


def write_model_folder(models: TrainingModels, out: str | Path, trained_text_encoder: bool,
                       prediction_type: str | None = None) -> Path:
    """A standard diffusers folder: the trained UNet (and text encoders), the VAE trained with (when it came from
    --pretrained_vae_model_name_or_path, as the reference saves it), every other component copied."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoders = models.text_encoders if trained_text_encoder else {}
    written = {"unet", *encoders} | ({"vae"} if models.vae_folder is not None else set())
    src = models.folder
    if src.resolve() != out.resolve():
        shutil.copy2(src / "model_index.json", out / "model_index.json")
        for name, value in models.model_index.items():
            if name.startswith("_") or name in written or not isinstance(value, list) or value[0] is None:
                continue
            if (src / name).is_dir():
                shutil.copytree(src / name, out / name, dirs_exist_ok=True)
    models.unet.save_pretrained(str(out / "unet"))
    for name, encoder in encoders.items():
        encoder.save_pretrained(str(out / name))
    if models.vae_folder is not None:  # the VAE's own files, unchanged (frozen; any dtype it was loaded in)
        (out / "vae").mkdir(exist_ok=True)
        for path in sorted(models.vae_folder.iterdir()):
            if path.is_file() and (path.name == "config.json" or path.suffix == ".safetensors"
                                   or path.name.endswith(".safetensors.index.json")):
                shutil.copy2(path, out / "vae" / path.name)
    if prediction_type is not None:  # the model now predicts this: inference must read it from the folder
        path = out / "scheduler" / "scheduler_config.json"
        data = json.loads(path.read_text())
        data["prediction_type"] = prediction_type
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return out
