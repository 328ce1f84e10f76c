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

__all__ = ["TrainingModels", "load_training_models", "resolve_model_folder", "write_model_folder"]

logger = logging.getLogger(__name__)

SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionModularPipeline")


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


def resolve_model_folder(config: TrainingConfig) -> Path:
    """A local folder for `--pretrained_model_name_or_path` (a Hub repo is downloaded into the cache)."""
    name = config.pretrained_model_name_or_path
    if is_local(name):
        folder = Path(name)
    else:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name, revision=config.revision, cache_dir=config.cache_dir))
    if not (folder / "model_index.json").is_file():
        raise TrainingConfigError(f"--pretrained_model_name_or_path={name!r}: no model_index.json; training needs "
                                  "a diffusers-format SD 1.x/2.x folder or repo (unet/, vae/, text_encoder/, "
                                  "tokenizer/, scheduler/).")
    return folder


def load_training_models(config: TrainingConfig, device: torch.device | str = "cpu") -> TrainingModels:
    from transformers import CLIPTextModel, CLIPTokenizer

    from ..components.image_processor import VaeImageProcessor
    from ..components.models import AutoencoderKL, UNet2DConditionModel
    from ..components.schedulers import DDPMScheduler
    from ..guiders import ClassifierFreeGuidance

    folder = resolve_model_folder(config)
    index = json.loads((folder / "model_index.json").read_text())
    cls = index.get("_class_name")
    if cls not in SUPPORTED_PIPELINES:
        raise TrainingConfigError(f"--pretrained_model_name_or_path: a {cls} model; training supports SD 1.x/2.x "
                                  f"folders ({', '.join(SUPPORTED_PIPELINES[:2])}) in this version.")
    present = {k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None}
    missing = {"unet", "vae", "tokenizer", "scheduler"} - present
    if missing:
        raise TrainingConfigError(f"--pretrained_model_name_or_path={str(folder)!r}: model_index.json has no "
                                  f"{sorted(missing)} component(s), which training needs.")
    kw = {"variant": config.variant}
    unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", **kw)
    for name in ("text_encoder", "tokenizer"):  # transformers reads these folders itself: keep them inside
        check_local_tree(str(folder), name)
    text_encoder = None
    if "text_encoder" in present:
        text_encoder = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder", **kw)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(str(folder), subfolder="scheduler")
    if config.prediction_type is not None:
        scheduler = DDPMScheduler.from_config(scheduler.config, prediction_type=config.prediction_type)
    return TrainingModels(
        folder=folder, model_index=index, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        noise_scheduler=scheduler, guider=ClassifierFreeGuidance(guidance_scale=1.0),
        image_processor=VaeImageProcessor(vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1)))


def write_model_folder(models: TrainingModels, out: str | Path, trained_text_encoder: bool,
                       prediction_type: str | None = None) -> Path:
    """A standard diffusers folder: the trained UNet (and text encoder), every other component copied."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"unet"} | ({"text_encoder"} if trained_text_encoder else set())
    src = models.folder
    if src.resolve() != out.resolve():
        shutil.copy2(src / "model_index.json", out / "model_index.json")
        for name, value in models.model_index.items():
            if name.startswith("_") or name in written or not isinstance(value, list) or value[0] is None:
                continue
            if (src / name).is_dir():
                shutil.copytree(src / name, out / name, dirs_exist_ok=True)
    models.unet.save_pretrained(str(out / "unet"))
    if trained_text_encoder:
        models.text_encoder.save_pretrained(str(out / "text_encoder"))
    if prediction_type is not None:  # the model now predicts this: inference must read it from the folder
        path = out / "scheduler" / "scheduler_config.json"
        data = json.loads(path.read_text())
        data["prediction_type"] = prediction_type
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return out
