"""A small SD-architecture folder with seeded random weights, built offline for `diffblocks demo`.

The weights are random (there is no trained bundled model yet), so the demo image is structured
noise: the demo shows the whole block graph running end to end, not image quality.
"""

from __future__ import annotations

import json
import logging
import os
import string
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

__all__ = ["DEMO_VERSION", "build_demo_folder", "demo_folder"]

DEMO_VERSION = 1
_MAX_LENGTH = 32

_UNET = {
    "sample_size": 32, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32, "attention_head_dim": 8,
    "norm_num_groups": 8,
}
_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 64,
    "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8,
}
_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
              "num_train_timesteps": 1000, "steps_offset": 1}


def demo_folder() -> Path:
    """Where the demo folder is cached (`$DIFFBLOCKS_CACHE` or ~/.cache/diffblocks)."""
    root = Path(os.environ.get("DIFFBLOCKS_CACHE", Path.home() / ".cache" / "diffblocks"))
    return root / f"demo-sd-random-v{DEMO_VERSION}"


def _write_tokenizer(directory: Path) -> None:
    from transformers import CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    chars = sorted(set(string.ascii_lowercase + string.digits + "!,.'-"))
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"),
                              model_max_length=_MAX_LENGTH)
    tokenizer.save_pretrained(str(directory))


def build_demo_folder(path: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Write (once) a standard diffusers-format SD folder with seeded random weights; returns its path."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from ...components.models import AutoencoderKL, UNet2DConditionModel
    from ...components.schedulers import EulerDiscreteScheduler

    out = Path(path) if path is not None else demo_folder()
    if (out / "model_index.json").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    logger.info("building the random-weight demo folder at %s", out)
    torch.manual_seed(seed)
    UNet2DConditionModel.from_config(_UNET).save_pretrained(str(tmp / "unet"))
    AutoencoderKL.from_config(_VAE).save_pretrained(str(tmp / "vae"))
    EulerDiscreteScheduler.from_config(_SCHEDULER).save_pretrained(str(tmp / "scheduler"))
    _write_tokenizer(tmp / "tokenizer")
    vocab_size = len(json.loads((tmp / "tokenizer" / "vocab.json").read_text()))
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=_MAX_LENGTH, bos_token_id=vocab_size - 2,
                            eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    CLIPTextModel(config).save_pretrained(str(tmp / "text_encoder"))
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "_note": "seeded RANDOM weights built by `diffblocks demo`; not a trained model",
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(out)
    except OSError:  # built concurrently by another process: keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out
