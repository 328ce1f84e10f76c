"""Images made during training with our own inference pipeline on the weights being trained:
validation images, and DreamBooth's class images for prior preservation."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch

from .config import TrainingConfig
from .data import Example, _images_in, check_readable

__all__ = ["generate_class_images", "inference_pipeline", "validation_images"]

logger = logging.getLogger(__name__)


def inference_pipeline(models: Any):
    """The preset pipeline of the model folder (SD or SDXL), running on the in-memory (trained) components."""
    from ..runtime.pipeline import ModularPipeline

    pipe = ModularPipeline.from_pretrained(str(models.folder))
    given = {"unet": models.unet, "vae": models.vae, "tokenizer": models.tokenizer, "tokenizer_2": models.tokenizer_2,
             **models.text_encoders}
    given = {k: v for k, v in given.items() if v is not None}
    pipe.update_components(**{k: v for k, v in given.items() if k in pipe.component_names})
    pipe.load_components()  # what training does not hold (the inference scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def _eval_weights(models: Any, ema: Any = None):
    """Models in eval mode (and the EMA weights in the UNet, when kept) for the duration."""
    modules = [models.unet, *models.text_encoders.values()]
    modes = [m.training for m in modules]
    backup = None
    if ema is not None:
        backup = [p.detach().clone() for p in models.unet.parameters()]
        ema.copy_to(models.unet.parameters())
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
        if backup is not None:
            with torch.no_grad():
                for p, b in zip(models.unet.parameters(), backup):
                    p.copy_(b)


def validation_images(config: TrainingConfig, models: Any, step: int, ema: Any = None) -> list[Path]:
    """`num_validation_images` PNGs of `validation_prompt` under output_dir/validation/, seeded by --seed."""
    out = Path(config.output_dir) / "validation"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with _eval_weights(models, ema):
        pipe = inference_pipeline(models)
        for i in range(config.num_validation_images):
            gen = torch.Generator().manual_seed((config.seed or 0) + i)
            image = pipe(prompt=config.validation_prompt, num_inference_steps=config.validation_inference_steps,
                         height=config.resolution, width=config.resolution, generator=gen, output="images")[0]
            path = out / f"step-{step:06d}-{i}.png"
            image.save(path)
            paths.append(path)
    logger.info("Validation: %d image(s) of %r at step %d in %s", len(paths), config.validation_prompt, step, out)
    return paths


def generate_class_images(config: TrainingConfig, accelerator, models: Any) -> list[Example]:
    """DreamBooth prior preservation: make the class folder hold `num_class_images` images, generating the
    missing ones from `class_prompt` with the (not yet trained) model; returns them as class examples."""
    folder = Path(config.class_data_dir)
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        have = len(_images_in(folder))
        missing = config.num_class_images - have
        if missing > 0:
            logger.info("Generating %d class image(s) of %r into %s", missing, config.class_prompt, folder)
            with _eval_weights(models):
                pipe = inference_pipeline(models)
                made = 0
                while made < missing:
                    n = min(config.sample_batch_size, missing - made)
                    gens = [torch.Generator().manual_seed((config.seed or 0) + have + made + j) for j in range(n)]
                    images = pipe(prompt=[config.class_prompt] * n, height=config.resolution, width=config.resolution,
                                  num_inference_steps=config.class_generation_steps, generator=gens, output="images")
                    for image in images:
                        image.save(folder / f"class-{have + made:05d}.png")
                        made += 1
    accelerator.wait_for_everyone()
    paths = _images_in(folder)[: config.num_class_images]
    examples = [Example(p, config.class_prompt, is_class=True) for p in paths]
    check_readable(examples, "--class_data_dir")
    return examples
