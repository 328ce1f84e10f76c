"""The outer training loop on accelerate: data, epochs, accumulation, checkpoints, resume, validation, outputs.

The per-step work is a block graph (`blocks.TEXT2IMAGE_TRAIN_BLOCKS` / `DREAMBOOTH_TRAIN_BLOCKS`), run with
gradients enabled; this module only drives it. Pass `blocks=` to `train` to train with an edited graph.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..blocks import PipelineState, SequentialPipelineBlocks
from ..blocks.base import ComponentsNamespace
from ..blocks.validation import check_inputs
from .blocks import DREAMBOOTH_TRAIN_BLOCKS, TEXT2IMAGE_TRAIN_BLOCKS
from .checkpoints import find_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainingConfig, TrainingConfigError
from .data import (
    TrainingDataset,
    caption_folder_examples,
    check_readable,
    collate,
    dreambooth_examples,
    hub_dataset_examples,
    shard_batches,
)
from .ema import EMAWeights
from .lora import TEXT_ENCODER_LORA_TARGETS, UNET_LORA_TARGETS, add_lora, save_lora_weights
from .models import (
    DEFAULT_RESOLUTION,
    TrainingModels,
    load_training_models,
    model_family,
    resolve_model_folder,
    write_model_folder,
)
from .sdxl import SDXL_DREAMBOOTH_TRAIN_BLOCKS, SDXL_TEXT2IMAGE_TRAIN_BLOCKS
from .validation import generate_class_images, validation_images

__all__ = ["TrainingResult", "train", "train_dreambooth", "train_text2image"]

logger = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    """What a run did: optimizer steps taken, the loss after each, and where the outputs are."""

    global_step: int
    output_dir: Path
    losses: list[float] = field(default_factory=list)
    validation_images: list[Path] = field(default_factory=list)


class _Prepared:
    """A model as the blocks see it: calls go through accelerate's wrapper (DDP, autocast), attributes
    (config, dtype, parameters) come from the model itself."""

    def __init__(self, wrapped: Any, module: torch.nn.Module) -> None:
        self._wrapped, self._module = wrapped, module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapped(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def _examples(config: TrainingConfig):
    if config.workflow == "dreambooth":
        examples = dreambooth_examples(config.instance_data_dir, config.instance_prompt)
        check_readable(examples, "--instance_data_dir")
        return examples
    if config.train_data_dir:
        examples = caption_folder_examples(config.train_data_dir, config.image_column, config.caption_column)
        check_readable(examples, "--train_data_dir")
    else:
        examples = hub_dataset_examples(config.dataset_name, config.dataset_config_name, config.image_column,
                                        config.caption_column, config.cache_dir)
    if config.max_train_samples is not None:
        examples = examples[: config.max_train_samples]
    return examples


def _make_accelerator(config: TrainingConfig):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    log_with = None
    if config.report_to and config.report_to != "none":
        try:
            import tensorboard  # noqa: F401
            log_with = config.report_to
        except ImportError:
            logger.warning("--report_to %s: tensorboard is not installed; metrics go to the log only "
                           "(pip install tensorboard, or pass --report_to none).", config.report_to)
    project = ProjectConfiguration(project_dir=config.output_dir,
                                   logging_dir=str(Path(config.output_dir) / config.logging_dir))
    # torchrun on a machine without a GPU: accelerate only picks multi-process CPU (gloo) when told cpu=True
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    has_gpu = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    return Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps,
                       mixed_precision=config.mixed_precision, log_with=log_with, project_config=project,
                       cpu=distributed and not has_gpu)


def _optimizer(config: TrainingConfig, params: list[torch.nn.Parameter], lr: float):
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TrainingConfigError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes (it needs a "
                                      "CUDA GPU), or drop the option.") from None
        cls = bnb.optim.AdamW8bit
    else:
        cls = torch.optim.AdamW
    return cls(params, lr=lr, betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.adam_weight_decay,
               eps=config.adam_epsilon)


def _release_accelerate_state() -> None:
    # accelerate keeps one process-wide AcceleratorState: a second run in the same Python process with another
    # --mixed_precision is refused by accelerate ("already initialized") unless it is reset. accelerate has no
    # public reset (its own tests call these), so this is the one private accelerate call left; the
    # PartialState (process group, device) stays.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()


def _set_sync(accelerator, sync: bool) -> None:
    # accelerate's `accumulate` counts micro-batches across epochs; we sync at each epoch end as well, like a
    # prepared dataloader does, so the data position of a checkpoint is always an epoch + batch index. The
    # public `Accelerator.sync_gradients` setter is what the optimizer/scheduler wrappers and clipping read.
    accelerator.sync_gradients = sync


class Trainer:
    """One training run. `Trainer(config).run()` is what `train(config)` does."""

    def __init__(self, config: TrainingConfig, blocks: SequentialPipelineBlocks | None = None) -> None:
        self.config = config
        self._blocks = blocks

    @property
    def blocks(self) -> SequentialPipelineBlocks:
        """The training-step graph: the one passed in, else the default of the model's family and workflow."""
        if self._blocks is None:
            family = self.models.family if getattr(self, "models", None) is not None else \
                model_family(resolve_model_folder(self.config))
            dreambooth = self.config.workflow == "dreambooth"
            default = {("sd", False): TEXT2IMAGE_TRAIN_BLOCKS, ("sd", True): DREAMBOOTH_TRAIN_BLOCKS,
                       ("sdxl", False): SDXL_TEXT2IMAGE_TRAIN_BLOCKS,
                       ("sdxl", True): SDXL_DREAMBOOTH_TRAIN_BLOCKS}[(family, dreambooth)]
            self._blocks = SequentialPipelineBlocks.from_blocks_dict(default)
        return self._blocks

    @blocks.setter
    def blocks(self, blocks: SequentialPipelineBlocks) -> None:
        self._blocks = blocks

    # -- setup ---------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Check options and data, load models, build optimizer, schedule and accelerate state (once)."""
        if getattr(self, "accelerator", None) is not None:
            return
        cfg = self.config
        cfg.validate()
        self.examples = _examples(cfg)  # data errors before any model is loaded
        self.accelerator = acc = _make_accelerator(cfg)
        if cfg.seed is not None:
            from accelerate.utils import set_seed

            set_seed(cfg.seed)
        self.models: TrainingModels = load_training_models(cfg, acc.device)
        cfg.validate(has_text_encoder=self.models.text_encoder is not None)
        m = self.models
        if cfg.resolution is None:  # the family's default, as the reference scripts (512; SDXL 1024)
            self.config = cfg = cfg.replace(resolution=DEFAULT_RESOLUTION[m.family])
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.mixed_precision, torch.float32)

        encoders = m.text_encoders  # SDXL: text_encoder and text_encoder_2, trained together
        m.vae.requires_grad_(False)
        for encoder in encoders.values():
            encoder.requires_grad_(cfg.train_text_encoder and not cfg.lora)
        m.unet.requires_grad_(not cfg.lora)
        if cfg.lora:
            add_lora(m.unet, UNET_LORA_TARGETS, cfg.rank, cfg.lora_alpha)
            if cfg.train_text_encoder:
                for encoder in encoders.values():
                    add_lora(encoder, TEXT_ENCODER_LORA_TARGETS, cfg.rank, cfg.lora_alpha)
        self.trained_names = ["unet"] + (list(encoders) if cfg.train_text_encoder else [])
        self.trained = [getattr(m, name) for name in self.trained_names]
        # frozen weights in the compute dtype; trained ones stay float32 (mixed precision autocasts)
        m.vae.to(acc.device, dtype=self.weight_dtype)
        for model in (m.unet, *encoders.values()):
            if model in self.trained and not cfg.lora:
                model.to(acc.device)
            else:
                model.to(acc.device, dtype=self.weight_dtype)
                for p in model.parameters():
                    if p.requires_grad:
                        p.data = p.data.float()
        if cfg.gradient_checkpointing:
            m.unet.enable_gradient_checkpointing()
            if cfg.train_text_encoder:
                for encoder in encoders.values():  # transformers 5 renamed it activation_checkpointing_enable
                    enable = getattr(encoder, "activation_checkpointing_enable", None) or \
                        encoder.gradient_checkpointing_enable
                    enable()

        if cfg.workflow == "dreambooth" and cfg.with_prior_preservation:
            class_examples = generate_class_images(cfg, acc, m)
        else:
            class_examples = None
        self.dataset = TrainingDataset(self.examples, cfg.resolution, cfg.center_crop, cfg.random_flip,
                                       seed=cfg.seed or 0, class_examples=class_examples,
                                       proportion_empty_prompts=cfg.proportion_empty_prompts)

        batches = len(shard_batches(len(self.dataset), cfg.train_batch_size, 0, 0, acc.process_index,
                                    acc.num_processes))
        self.steps_per_epoch = math.ceil(batches / cfg.gradient_accumulation_steps)
        self.max_train_steps = cfg.max_train_steps or cfg.num_train_epochs * self.steps_per_epoch
        self.num_epochs = math.ceil(self.max_train_steps / self.steps_per_epoch)

        lr = cfg.learning_rate
        if cfg.scale_lr:
            lr *= cfg.gradient_accumulation_steps * cfg.train_batch_size * acc.num_processes
        self.params = [p for model in self.trained for p in model.parameters() if p.requires_grad]
        optimizer = _optimizer(cfg, self.params, lr)
        from transformers import get_scheduler

        lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer,
                                     num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
                                     num_training_steps=self.max_train_steps * acc.num_processes)
        prepared = acc.prepare(*self.trained, optimizer, lr_scheduler)
        self.wrapped = list(prepared[: len(self.trained)])
        self.optimizer, self.lr_scheduler = prepared[len(self.trained):]
        self.ema = EMAWeights(m.unet.parameters()) if cfg.use_ema else None
        self.generator = torch.Generator().manual_seed((cfg.seed or 0) + acc.process_index)

        components = {"vae": m.vae, "tokenizer": m.tokenizer, "text_encoder": m.text_encoder,
                      "noise_scheduler": m.noise_scheduler, "guider": m.guider, "image_processor": m.image_processor}
        if m.family == "sdxl":
            components.update(text_encoder_2=m.text_encoder_2, tokenizer_2=m.tokenizer_2)
        for name, model, wrapped in zip(self.trained_names, self.trained, self.wrapped):
            components[name] = _Prepared(wrapped, model)
        for spec in self.blocks.expected_configs:  # pipeline settings (force_zeros_for_empty_prompt, ...)
            components.setdefault(spec.name, m.model_index.get(spec.name, spec.default))
        self.components = ComponentsNamespace(components)
        if acc.is_main_process:
            acc.init_trackers(f"diffblocks-{cfg.workflow}", config={k: v for k, v in vars(cfg).items()
                                                                     if isinstance(v, (int, float, str, bool))})

    # -- one step --------------------------------------------------------------------------------------------
    def step_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        inputs = {"prompt": batch["prompt"], "image": batch["image"], "dtype": self.weight_dtype,
                  "generator": self.generator, "noise_offset": cfg.noise_offset, "snr_gamma": cfg.snr_gamma,
                  "prediction_type": cfg.prediction_type, "accelerator": self.accelerator,
                  "optimizer": self.optimizer, "lr_scheduler": self.lr_scheduler, "params_to_clip": self.params,
                  "max_grad_norm": cfg.max_grad_norm, "original_sizes": batch.get("original_sizes"),
                  "crop_top_lefts": batch.get("crop_top_lefts")}
        if cfg.workflow == "dreambooth":
            inputs.update(num_instance=batch["num_instance"], prior_loss_weight=cfg.prior_loss_weight)
        io = self.blocks._io().input_table
        return {k: v for k, v in inputs.items() if k in io}

    def run_step(self, batch: dict[str, Any]) -> PipelineState:
        values = check_inputs(self.blocks, self.step_inputs(batch), where=f"training step ({self.config.workflow})")
        state = PipelineState()
        for name, value in values.items():
            state.set(name, value)
        _, state = self.blocks(self.components, state)
        return state

    # -- the loop --------------------------------------------------------------------------------------------
    def run(self) -> TrainingResult:
        from tqdm.auto import tqdm

        self.setup()
        cfg, acc = self.config, self.accelerator
        out = Path(cfg.output_dir)
        global_step, first_epoch, skip = 0, 0, 0
        if cfg.resume_from_checkpoint:
            path = find_checkpoint(out, cfg.resume_from_checkpoint)
            if path is None:
                logger.warning("--resume_from_checkpoint latest: no checkpoint in %s; starting a new run.", out)
            else:
                global_step = load_checkpoint(path, acc, self)
                first_epoch = global_step // self.steps_per_epoch
                skip = (global_step % self.steps_per_epoch) * cfg.gradient_accumulation_steps
                logger.info("Resumed from %s at step %d (epoch %d, batch %d)", path, global_step, first_epoch, skip)
        result = TrainingResult(global_step, out)
        (logger.info if acc.is_main_process else logger.debug)("Training %s: %d examples, %d epochs, %d optimizer steps, batch %d x %d processes x %d "
                    "accumulation", cfg.workflow, len(self.dataset), self.num_epochs, self.max_train_steps,
                    cfg.train_batch_size, acc.num_processes, cfg.gradient_accumulation_steps)
        progress = tqdm(total=self.max_train_steps, initial=global_step, desc="Steps",
                        disable=not acc.is_local_main_process)
        for model in self.trained:
            model.train()
        train_loss = 0.0
        for epoch in range(first_epoch, self.num_epochs):
            if global_step >= self.max_train_steps:
                break
            self.dataset.set_epoch(epoch)
            batches = shard_batches(len(self.dataset), cfg.train_batch_size, cfg.seed or 0, epoch,
                                    acc.process_index, acc.num_processes)
            start = skip if epoch == first_epoch else 0
            loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches[start:], collate_fn=collate,
                                                 num_workers=cfg.dataloader_num_workers)
            for i, batch in enumerate(loader, start):
                sync = (i + 1) % cfg.gradient_accumulation_steps == 0 or i + 1 == len(batches)
                _set_sync(acc, sync)
                with contextlib.ExitStack() as stack:
                    if not sync:  # no DDP all-reduce on accumulating micro-batches
                        for model in self.wrapped:
                            stack.enter_context(acc.no_sync(model))
                    state = self.run_step(batch)
                loss = state.get("loss").detach()
                avg = acc.gather(loss.repeat(cfg.train_batch_size)).mean()
                train_loss += avg.item() / cfg.gradient_accumulation_steps
                if not sync:
                    continue
                if self.ema is not None:
                    self.ema.step(self.models.unet.parameters())
                global_step += 1
                result.losses.append(train_loss)
                lr = self.lr_scheduler.get_last_lr()[0]
                acc.log({"train_loss": train_loss, "lr": lr}, step=global_step)
                progress.update(1)
                progress.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}", step=global_step)
                logger.debug("step %d: loss %.6f lr %.3g", global_step, train_loss, lr)
                train_loss = 0.0
                if global_step % cfg.checkpointing_steps == 0:
                    save_checkpoint(out / f"checkpoint-{global_step}", acc, self, global_step)
                if cfg.validation_prompt and global_step % cfg.validation_steps == 0:
                    result.validation_images += self.validate(global_step)
                if global_step >= self.max_train_steps:
                    break
        progress.close()
        acc.wait_for_everyone()
        if cfg.validation_prompt and global_step % cfg.validation_steps != 0:
            result.validation_images += self.validate(global_step)
        self.save_outputs(out)
        result.global_step = global_step
        acc.end_training()
        _release_accelerate_state()
        return result

    # -- outputs -----------------------------------------------------------------------------------------------
    def validate(self, step: int) -> list[Path]:
        paths: list[Path] = []
        if self.accelerator.is_main_process:
            paths = validation_images(self.config, self.models, step, self.ema)
        self.accelerator.wait_for_everyone()
        return paths

    def save_outputs(self, out: Path) -> None:
        cfg, acc, m = self.config, self.accelerator, self.models
        if acc.is_main_process:
            if cfg.lora:
                path = save_lora_weights(out, dict(zip(self.trained_names, self.trained)))
                logger.info("Saved LoRA weights to %s", path)
            else:
                if self.ema is not None:
                    self.ema.copy_to(m.unet.parameters())
                write_model_folder(m, out, trained_text_encoder=cfg.train_text_encoder,
                                   prediction_type=cfg.prediction_type)
                logger.info("Saved the fine-tuned model to %s", out)
            if cfg.push_to_hub:
                from ..components.hub import upload_folder

                upload_folder(out, cfg.hub_model_id or out.name, token=cfg.hub_token,
                              ignore_patterns=["checkpoint-*", "logs/*", "validation/*"])
        acc.wait_for_everyone()


def train(config: TrainingConfig, blocks: SequentialPipelineBlocks | None = None) -> TrainingResult:
    """Run one training workflow (`config.workflow`); `blocks` replaces the default training-step graph."""
    return Trainer(config, blocks).run()


def train_text2image(config: TrainingConfig | None = None, blocks: SequentialPipelineBlocks | None = None,
                     **options: Any) -> TrainingResult:
    """Fine-tune (or LoRA-train) on captioned images. Options as keywords or a `TrainingConfig`."""
    config = (config or TrainingConfig()).replace(workflow="text2image", **options)
    return train(config, blocks)


def train_dreambooth(config: TrainingConfig | None = None, blocks: SequentialPipelineBlocks | None = None,
                     **options: Any) -> TrainingResult:
    """DreamBooth on instance images (+ prior preservation with generated class images)."""
    config = (config or TrainingConfig()).replace(workflow="dreambooth", **options)
    return train(config, blocks)

