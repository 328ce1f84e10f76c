"""Training options, named as in the diffusers training scripts so their commands port unchanged.

`TrainingConfig` is the Python API (one dataclass for both workflows); `build_parser` makes the CLI from the
same fields, with each workflow's defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WORKFLOWS", "TrainingConfig", "TrainingConfigError", "TrainingDataError", "build_parser", "config_from_args"]

WORKFLOWS = ("text2image", "dreambooth")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


class TrainingConfigError(ValueError):
    """Options that cannot work together (raised before any model is loaded)."""


class TrainingDataError(ValueError):
    """A training data folder or dataset that cannot be trained on (raised before any training step)."""


def _opt(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class TrainingConfig:
    """Everything a training run needs. Field names are the CLI option names without the leading `--`."""

    pretrained_model_name_or_path: str | None = _opt(None, "diffusers-format SD 1.x/2.x or SDXL folder or Hub repo "
                                                           "to start from (the family is read from model_index.json)")
    pretrained_vae_model_name_or_path: str | None = _opt(None, "a VAE folder or Hub repo to use instead of the "
                                                               "model's (SDXL: e.g. an fp16-safe VAE)")
    workflow: str = _opt("text2image", "text2image or dreambooth", cli=False)
    revision: str | None = _opt(None, "Hub revision of the pretrained model")
    variant: str | None = _opt(None, "weights variant, e.g. fp16")
    # data
    dataset_name: str | None = _opt(None, "a `datasets` dataset name (needs the datasets extra)")
    dataset_config_name: str | None = _opt(None, "the dataset's config name")
    train_data_dir: str | None = _opt(None, "images + metadata.jsonl ({file_name, text}) or same-name .txt captions")
    image_column: str = _opt("image", "image column of the dataset")
    caption_column: str = _opt("text", "caption column of the dataset / metadata.jsonl")
    max_train_samples: int | None = _opt(None, "use only this many examples")
    cache_dir: str | None = _opt(None, "download cache")
    resolution: int | None = _opt(None, "training resolution, a multiple of 8 (default: 512; SDXL 1024)")
    center_crop: bool = _opt(False, "centre crop instead of random crop")
    random_flip: bool = _opt(False, "random horizontal flips")
    proportion_empty_prompts: float = _opt(0.0, "fraction of captions replaced by the empty prompt (trains the "
                                                "unconditional prediction classifier-free guidance uses)")
    dataloader_num_workers: int = _opt(0, "data loading worker processes")
    # dreambooth
    instance_data_dir: str | None = _opt(None, "DreamBooth: folder of instance images")
    instance_prompt: str | None = _opt(None, "DreamBooth: prompt with the identifier, e.g. 'a photo of sks dog'")
    class_data_dir: str | None = _opt(None, "DreamBooth: folder of class images (missing ones are generated)")
    class_prompt: str | None = _opt(None, "DreamBooth: prompt of the class, e.g. 'a photo of a dog'")
    with_prior_preservation: bool = _opt(False, "DreamBooth: add the class-prior loss")
    prior_loss_weight: float = _opt(1.0, "DreamBooth: weight of the prior loss")
    num_class_images: int = _opt(100, "DreamBooth: class images wanted (generated when fewer exist)")
    sample_batch_size: int = _opt(4, "DreamBooth: batch size when generating class images")
    class_generation_steps: int = _opt(25, "DreamBooth: inference steps per generated class image")
    # training
    output_dir: str = _opt("sd-model-finetuned", "where the model, checkpoints and validation images go")
    seed: int | None = _opt(None, "seed for reproducible training")
    train_batch_size: int = _opt(16, "batch size per process")
    num_train_epochs: int = _opt(100, "epochs (ignored when --max_train_steps is set)")
    max_train_steps: int | None = _opt(None, "total optimizer steps (overrides --num_train_epochs)")
    gradient_accumulation_steps: int = _opt(1, "micro-batches per optimizer step")
    gradient_checkpointing: bool = _opt(False, "recompute activations in backward (less memory)")
    learning_rate: float = _opt(1e-4, "initial learning rate (after warmup)")
    scale_lr: bool = _opt(False, "multiply the LR by accumulation steps x batch size x processes")
    lr_scheduler: str = _opt("constant", "LR schedule", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = _opt(500, "warmup steps of the LR schedule")
    snr_gamma: float | None = _opt(None, "Min-SNR weighting gamma (5.0 recommended)")
    use_8bit_adam: bool = _opt(False, "8-bit Adam from bitsandbytes")
    allow_tf32: bool = _opt(False, "allow TF32 matmuls on Ampere GPUs")
    use_ema: bool = _opt(False, "keep an EMA of the trained weights and save it")
    adam_beta1: float = _opt(0.9, "Adam beta1")
    adam_beta2: float = _opt(0.999, "Adam beta2")
    adam_weight_decay: float = _opt(1e-2, "AdamW weight decay")
    adam_epsilon: float = _opt(1e-08, "Adam epsilon")
    max_grad_norm: float = _opt(1.0, "gradient clipping norm")
    prediction_type: str | None = _opt(None, "override the scheduler's prediction type",
                                       choices=("epsilon", "v_prediction", "sample"))
    noise_offset: float = _opt(0.0, "offset-noise scale (0.1 is common)")
    mixed_precision: str | None = _opt(None, "no, fp16 or bf16 (default: accelerate's config)",
                                       choices=("no", "fp16", "bf16"))
    train_text_encoder: bool = _opt(False, "also train the text encoder")
    # LoRA
    lora: bool = _opt(False, "train LoRA adapters instead of the full weights")
    rank: int = _opt(4, "LoRA rank")
    lora_alpha: float | None = _opt(None, "LoRA alpha (default: the rank)")
    # checkpoints, logging, validation, hub
    checkpointing_steps: int = _opt(500, "save a checkpoint-N folder every N optimizer steps")
    checkpoints_total_limit: int | None = _opt(None, "keep at most this many checkpoints")
    resume_from_checkpoint: str | None = _opt(None, "a checkpoint folder or 'latest'")
    validation_prompt: str | None = _opt(None, "prompt for validation images")
    num_validation_images: int = _opt(4, "validation images per run")
    validation_steps: int = _opt(100, "make validation images every N optimizer steps (and at the end)")
    validation_inference_steps: int = _opt(20, "denoising steps of the validation images")
    logging_dir: str = _opt("logs", "tensorboard log folder inside output_dir")
    report_to: str | None = _opt("tensorboard", "tensorboard (when installed) or none")
    push_to_hub: bool = _opt(False, "upload the output folder to the Hub")
    hub_model_id: str | None = _opt(None, "Hub repo id for --push_to_hub (default: the output folder's name)")
    hub_token: str | None = _opt(None, "Hub token (default: the logged-in one)")

    def replace(self, **changes: Any) -> TrainingConfig:
        return dataclasses.replace(self, **changes)

    def validate(self, has_text_encoder: bool | None = None) -> None:
        """Errors that need no model or data; `has_text_encoder` when the model folder is known."""
        problems = []
        if self.workflow not in WORKFLOWS:
            problems.append(f"workflow={self.workflow!r} is not one of {WORKFLOWS}")
        if not self.pretrained_model_name_or_path:
            problems.append("--pretrained_model_name_or_path is required")
        if self.resolution is not None and (self.resolution <= 0 or self.resolution % 8):
            problems.append(f"--resolution={self.resolution} must be a positive multiple of 8 (the VAE downsamples "
                            "by 8), e.g. 512 or 768")
        for name in ("train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "validation_steps",
                     "num_train_epochs", "rank"):
            if getattr(self, name) < 1:
                problems.append(f"--{name}={getattr(self, name)} must be >= 1")
        if self.max_train_steps is not None and self.max_train_steps < 1:
            problems.append(f"--max_train_steps={self.max_train_steps} must be >= 1")
        if self.lr_scheduler not in LR_SCHEDULERS:
            problems.append(f"--lr_scheduler={self.lr_scheduler!r} is not one of {LR_SCHEDULERS}")
        if self.workflow == "text2image" and not (self.train_data_dir or self.dataset_name):
            problems.append("text2image needs --train_data_dir (a folder of images with captions) or --dataset_name")
        if self.workflow == "dreambooth":
            if not self.instance_data_dir:
                problems.append("dreambooth needs --instance_data_dir")
            if not self.instance_prompt:
                problems.append("dreambooth needs --instance_prompt")
            if self.with_prior_preservation and not (self.class_data_dir and self.class_prompt):
                problems.append("--with_prior_preservation needs --class_data_dir and --class_prompt")
        if self.use_ema and self.lora:
            problems.append("--use_ema applies to full fine-tuning; it cannot be combined with --lora")
        if has_text_encoder is False and self.train_text_encoder:
            what = "--lora --train_text_encoder" if self.lora else "--train_text_encoder"
            problems.append(f"{what}: the model {self.pretrained_model_name_or_path!r} has no text_encoder "
                            "component to train")
        if problems:
            raise TrainingConfigError("Invalid training options:\n  - " + "\n  - ".join(problems))


WORKFLOW_DEFAULTS: dict[str, dict[str, Any]] = {
    "text2image": {},
    "dreambooth": {"output_dir": "dreambooth-model", "train_batch_size": 4, "num_train_epochs": 1,
                   "learning_rate": 5e-6},
}


def build_parser(workflow: str, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The CLI of one workflow: one option per `TrainingConfig` field, with that workflow's defaults."""
    parser = parser or argparse.ArgumentParser(prog=f"diffblocks train {workflow}")
    defaults = WORKFLOW_DEFAULTS[workflow]
    for f in dataclasses.fields(TrainingConfig):
        meta = dict(f.metadata)
        if not meta.pop("cli", True):
            continue
        help_text = meta.pop("help")
        default = defaults.get(f.name, f.default)
        if f.type in ("bool", bool):
            parser.add_argument(f"--{f.name}", action="store_true", default=default, help=help_text)
            continue
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        parser.add_argument(f"--{f.name}", type=kind, default=default, help=f"{help_text} (default: {default})",
                            **meta)
    parser.set_defaults(workflow=workflow)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    names = {f.name for f in dataclasses.fields(TrainingConfig)}
    return TrainingConfig(**{k: v for k, v in vars(args).items() if k in names})
