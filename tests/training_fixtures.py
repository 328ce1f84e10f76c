"""Tiny training fixtures: an SD 1.5-shaped folder (from fixtures_sd), captioned image folders, fast options."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from fixtures_sd import build_sd15, test_image
from safetensors.torch import load_file

from diffblocks.training import TrainingConfig

RES = 16  # the tiny VAE downsamples by 2: 8x8 latents


def captioned_folder(root: Path, n: int = 3, mode: str = "txt", size: int = 24) -> Path:
    """n images of different colours, captions in same-name .txt files or in metadata.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        test_image(size, seed=i).save(root / f"img{i}.png")
        caption = f"a pattern number {i}"
        if mode == "txt":
            (root / f"img{i}.txt").write_text(caption)
        else:
            lines.append(json.dumps({"file_name": f"img{i}.png", "text": caption}))
    if lines:
        (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def base_model(tmp_path_factory) -> Path:
    return build_sd15(tmp_path_factory.mktemp("train-base"))


def model_without_text_encoder(base: Path, root: Path) -> Path:
    out = root / "no-te"
    shutil.copytree(base, out)
    shutil.rmtree(out / "text_encoder")
    index = json.loads((out / "model_index.json").read_text())
    index["text_encoder"] = [None, None]
    (out / "model_index.json").write_text(json.dumps(index))
    return out


def fast_config(model: Path, data: Path, out: Path, **overrides) -> TrainingConfig:
    options = dict(pretrained_model_name_or_path=str(model), train_data_dir=str(data), output_dir=str(out),
                   resolution=RES, train_batch_size=2, max_train_steps=2, learning_rate=1e-3, lr_warmup_steps=0,
                   seed=0, report_to="none", checkpointing_steps=1000)
    options.update(overrides)
    return TrainingConfig(**options)


def unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)
