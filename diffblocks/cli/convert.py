"""`diffblocks convert FILE OUT_DIR`: an original-layout single-file checkpoint -> the standard diffusers folder."""

from __future__ import annotations

import argparse


def _dtype(name: str | None):
    import torch

    return {None: None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _convert(args: argparse.Namespace) -> int:
    from ..runtime.single_file import convert_single_file

    missing = convert_single_file(args.file, args.out_dir, config=args.config, torch_dtype=_dtype(args.dtype),
                                  **({"prediction_type": args.prediction_type} if args.prediction_type else {}))
    print(f"Wrote {args.out_dir}")
    if missing:
        print(f"Not in the file and not in --config: {missing} (written as null in model_index.json). Pass "
              "--config a diffusers-format folder or repo that holds them, or add them to the folder yourself.")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("convert", help="convert a single-file (.safetensors, LDM / BFL layout) checkpoint to a "
                                            "diffusers-format folder")
    parser.add_argument("file", help="the .safetensors checkpoint (SD 1.x/2.x, SDXL, Flux, ControlNet, VAE)")
    parser.add_argument("out_dir", help="folder to write (model_index.json + one subfolder per component)")
    parser.add_argument("--config", help="diffusers-format folder or Hub repo for configs and the components the "
                                         "file lacks (default: the shipped standard configs of the detected family)")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                        help="weights dtype of the written folder (default: float32)")
    parser.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], default=None,
                        help="override the detected prediction type (SD 2.x base models: epsilon)")
    parser.set_defaults(func=_convert)
