"""`checkpoint-N/` folders: accelerate's full state (models, optimizer, LR schedule, RNG) plus the trainable
weights in their usable form, the EMA, this run's noise generators and the step reached.

Resuming reads safetensors and JSON only. accelerate's `save_state` writes the optimizer, LR schedule and RNG
states with `torch.save` (pickles: `optimizer.bin`, `scheduler.bin`, `random_states_N.pkl`); they stay in the
folder for tools that expect them, but `load_checkpoint` restores the same states from the safetensors + JSON
copies written beside them (`optimizer_state.*`, `lr_scheduler_state.json`, `rng_state_N.*`) and the models from
accelerate's `model*.safetensors`, so a checkpoint folder from elsewhere cannot run code when resumed.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from .config import TrainingConfigError
from .lora import save_lora_weights
from .state_files import get_rng_states, load_tree, save_tree, set_rng_states

__all__ = ["find_checkpoint", "list_checkpoints", "load_checkpoint", "save_checkpoint"]

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """checkpoint-N folders of `output_dir`, oldest (smallest N) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def find_checkpoint(output_dir: str | Path, spec: str) -> Path | None:
    """`latest` -> the newest checkpoint (None when there is none); otherwise a folder (or a name inside output_dir)."""
    if spec == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(spec)
    if not path.is_dir() and (Path(output_dir) / spec).is_dir():
        path = Path(output_dir) / spec
    if not (path / "training_state.json").is_file():
        raise TrainingConfigError(f"--resume_from_checkpoint={spec!r}: not a checkpoint folder (no "
                                  f"training_state.json); pass 'latest' or a checkpoint-N folder of a previous run.")
    return path


def _generator_file(path: Path, process_index: int) -> Path:
    return path / f"generator_{process_index}.safetensors"


def _model_file(path: Path, index: int) -> Path:
    # accelerate's save_state names the prepared models' weights model.safetensors, model_1.safetensors, ...
    return path / ("model.safetensors" if index == 0 else f"model_{index}.safetensors")


def save_checkpoint(path: Path, accelerator, trainer: Any, global_step: int) -> None:
    from safetensors.torch import save_file

    cfg = trainer.config
    if accelerator.is_main_process and cfg.checkpoints_total_limit is not None:
        existing = list_checkpoints(path.parent)
        excess = len(existing) - cfg.checkpoints_total_limit + 1
        for old in existing[:max(excess, 0)]:
            logger.info("Removing %s (--checkpoints_total_limit %d)", old, cfg.checkpoints_total_limit)
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    save_file({"state": trainer.generator.get_state()}, str(_generator_file(path, accelerator.process_index)))
    save_tree(get_rng_states(), path / f"rng_state_{accelerator.process_index}")
    if accelerator.is_main_process:
        save_tree(trainer.optimizer.state_dict(), path / "optimizer_state")
        save_tree(trainer.lr_scheduler.state_dict(), path / "lr_scheduler_state")
        if accelerator.scaler is not None:
            save_tree(accelerator.scaler.state_dict(), path / "grad_scaler_state")
        trained = dict(zip(trainer.trained_names, trainer.trained))  # unet (+ text_encoder, text_encoder_2)
        if cfg.lora:
            save_lora_weights(path, trained)
        else:
            for name, model in trained.items():
                model.save_pretrained(str(path / name))
        if trainer.ema is not None:
            save_file(trainer.ema.state_dict(), str(path / "ema.safetensors"))
        (path / "training_state.json").write_text(json.dumps({"global_step": global_step}) + "\n")
        logger.info("Saved %s", path)
    accelerator.wait_for_everyone()


def load_checkpoint(path: Path, accelerator, trainer: Any) -> int:
    """Restore everything `save_checkpoint` wrote; returns the optimizer step to continue from."""
    from safetensors.torch import load_file

    needed = [_model_file(path, i) for i in range(len(trainer.wrapped))] + \
        [path / "optimizer_state.json", path / "lr_scheduler_state.json",
         path / f"rng_state_{accelerator.process_index}.json"]
    absent = [p.name for p in needed if not p.is_file()]
    if absent:
        raise TrainingConfigError(f"--resume_from_checkpoint {path}: missing {absent}; resuming reads the models "
                                  "(model*.safetensors) and the optimizer, LR schedule and RNG states as "
                                  "safetensors + JSON, which checkpoints of this diffblocks version write (a "
                                  "checkpoint with only accelerate's pickles is not resumed).")
    for i, wrapped in enumerate(trainer.wrapped):
        accelerator.unwrap_model(wrapped).load_state_dict(load_file(str(_model_file(path, i))))
    trainer.optimizer.load_state_dict(load_tree(path / "optimizer_state"))
    trainer.lr_scheduler.load_state_dict(load_tree(path / "lr_scheduler_state"))
    if accelerator.scaler is not None and (path / "grad_scaler_state.json").is_file():
        accelerator.scaler.load_state_dict(load_tree(path / "grad_scaler_state"))
    set_rng_states(load_tree(path / f"rng_state_{accelerator.process_index}"))
    gen_file = _generator_file(path, accelerator.process_index)
    if not gen_file.is_file():
        raise TrainingConfigError(f"--resume_from_checkpoint {path}: no {gen_file.name}; the checkpoint was written "
                                  f"by a run with fewer processes than this one ({accelerator.num_processes}).")
    trainer.generator.set_state(load_file(str(gen_file))["state"].to(torch.uint8))
    if trainer.ema is not None:
        ema_file = path / "ema.safetensors"
        if not ema_file.is_file():
            raise TrainingConfigError(f"--resume_from_checkpoint {path}: --use_ema is set but the checkpoint has no "
                                      "ema.safetensors (it was trained without --use_ema).")
        trainer.ema.load_state_dict(load_file(str(ema_file)))
    return int(json.loads((path / "training_state.json").read_text())["global_step"])
