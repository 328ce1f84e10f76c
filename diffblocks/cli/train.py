"""`diffblocks train text2image|dreambooth [options]`: the training workflows from the command line.

Options are the diffusers training scripts' (see `diffblocks.training.TrainingConfig`); `--lora` trains
adapters instead of the full weights. Runs under `torchrun` / `accelerate launch` for data-parallel training.
"""

from __future__ import annotations

import argparse
import logging

HELPS = {"text2image": "fine-tune on captioned images (--train_data_dir or --dataset_name)",
         "dreambooth": "teach a subject from a few images (--instance_data_dir, --instance_prompt)"}


def _run(args: argparse.Namespace) -> int:
    from ..training.config import TrainingConfigError, TrainingDataError, config_from_args

    logging.getLogger("diffblocks").setLevel(logging.INFO)
    config = config_from_args(args)
    try:
        config.validate()  # option errors before torch and the models load
        from ..training.trainer import train

        result = train(config)
    except (TrainingConfigError, TrainingDataError) as exc:
        raise SystemExit(f"diffblocks train {args.workflow}: {exc}") from None
    print(f"Trained {result.global_step} steps; outputs in {result.output_dir}")
    return 0


def register(subparsers) -> None:
    from ..training.config import WORKFLOWS, build_parser

    train_p = subparsers.add_parser("train",
                                    help="fine-tune, DreamBooth or LoRA-train an SD 1.x/2.x or SDXL model")
    workflows = train_p.add_subparsers(dest="workflow", required=True)
    for name in WORKFLOWS:
        sub = workflows.add_parser(name, help=HELPS[name])
        build_parser(name, sub)
        sub.set_defaults(func=_run)
