"""The recipe of the bundled demo model: data, tokenizer, VAE, then UNet + text encoder with our training workflow.

    python -m diffblocks.demo_data.recipe [--work DIR] [--out diffblocks/assets/demo_model] [--seed 0]

1. `generate_dataset`: every color x shape x background combination, `--per-combination` images each (64x64).
2. A CLIP BPE tokenizer whose caption words are single tokens (`tokenizer.py`).
3. The AutoencoderKL trained from scratch (`vae_training.py`; 64x64x3 <-> 16x16x4, scaling_factor measured).
4. A diffusers-format SD folder with that VAE, a randomly initialised UNet and CLIP text encoder, and the
   scheduler; then `diffblocks.training.train_text2image` on it (`--train_text_encoder`,
   `--proportion_empty_prompts` so classifier-free guidance has an unconditional prediction, Min-SNR weighting).
5. The trained folder's components are copied to `--out` with a README recording seed, steps, losses and times.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from .shapes import COLORS, SHAPES, generate_dataset

__all__ = ["SCHEDULER", "TEXT_ENCODER", "UNET", "VAE", "build_initial_folder", "main"]

logger = logging.getLogger(__name__)

MAX_LENGTH = 16  # "a yellow triangle on a white background" is 7 tokens + start/end
VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 64,
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8,
}
UNET: dict[str, Any] = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64, 64], "layers_per_block": 1, "cross_attention_dim": 64,
    "attention_head_dim": 8, "norm_num_groups": 8,
}
TEXT_ENCODER: dict[str, Any] = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "max_position_embeddings": MAX_LENGTH}
SCHEDULER: dict[str, Any] = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                             "num_train_timesteps": 1000, "steps_offset": 1, "prediction_type": "epsilon",
                             "timestep_spacing": "leading"}
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def build_initial_folder(folder: Path, vae: Any, seed: int) -> Path:
    """A diffusers-format SD folder: the trained `vae`, random UNet and text encoder, tokenizer, scheduler."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..components.models import UNet2DConditionModel
    from ..components.schedulers import EulerDiscreteScheduler
    from .tokenizer import write_clip_tokenizer

    words = ["a", "on", "background", *COLORS, *SHAPES]
    tokenizer_dir = write_clip_tokenizer(folder / "tokenizer", words, MAX_LENGTH)
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text())
    torch.manual_seed(seed)
    UNet2DConditionModel.from_config(UNET).save_pretrained(str(folder / "unet"))
    text_config = CLIPTextConfig(vocab_size=len(vocab), bos_token_id=vocab["<|startoftext|>"],
                                 eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
                                 **TEXT_ENCODER)
    CLIPTextModel(text_config).save_pretrained(str(folder / "text_encoder"))
    vae.save_pretrained(str(folder / "vae"))
    EulerDiscreteScheduler.from_config(SCHEDULER).save_pretrained(str(folder / "scheduler"))
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder


def _copy_model(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in COMPONENTS:
        shutil.copytree(src / name, dst / name)
    shutil.copy2(src / "model_index.json", dst / "model_index.json")


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffblocks.demo_data.recipe", description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="build/demo_model", help="data, intermediate folders, training outputs")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "assets" / "demo_model"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-combination", type=int, default=24, help="training images of each combination")
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--vae-batch-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32, help="UNet + text encoder batch size")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch

    from ..training import train_text2image
    from .vae_training import load_images, train_vae

    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    times: dict[str, float] = {}
    start = time.perf_counter()
    generate_dataset(work / "data", seed=args.seed, per_combination=args.per_combination, progress=True)
    times["data"] = time.perf_counter() - start

    start = time.perf_counter()
    vae_result = train_vae(VAE, load_images(work / "data"), steps=args.vae_steps, batch_size=args.vae_batch_size,
                           seed=args.seed)
    times["vae"] = time.perf_counter() - start
    initial = build_initial_folder(work / "initial", vae_result.vae, args.seed)

    start = time.perf_counter()
    result = train_text2image(
        pretrained_model_name_or_path=str(initial), train_data_dir=str(work / "data"), output_dir=str(work / "trained"),
        resolution=64, center_crop=True, train_batch_size=args.batch_size, max_train_steps=args.unet_steps,
        learning_rate=args.learning_rate, lr_scheduler="cosine", lr_warmup_steps=100, max_grad_norm=1.0,
        adam_weight_decay=1e-2, train_text_encoder=True, proportion_empty_prompts=0.1, snr_gamma=5.0,
        seed=args.seed, mixed_precision="no", checkpointing_steps=10**9, report_to="none")
    times["unet"] = time.perf_counter() - start
    out = Path(args.out)
    _copy_model(Path(result.output_dir), out)

    unet_losses = [float(v) for v in result.losses]
    tail = unet_losses[-200:]
    readme = f"""# The diffblocks demo model

A small Stable-Diffusion-architecture model (AutoencoderKL + UNet2DConditionModel + CLIP text encoder and
tokenizer, standard diffusers format) trained from scratch on procedurally drawn 64x64 images captioned
`"a {{color}} {{shape}} on a {{background}} background"` (colors and backgrounds: {", ".join(COLORS)}; shapes:
{", ".join(SHAPES)}; object color != background color). It draws those prompts and nothing else.

Made by `make demo-model` (`python -m diffblocks.demo_data.recipe`), torch {torch.__version__}, CPU, 2 cores:

| stage | setting | result | wall time |
|---|---|---|---|
| data | seed {args.seed}, {args.per_combination} images x 90 combinations | {args.per_combination * 90} images | {times["data"]:.0f} s |
| VAE | {args.vae_steps} steps, batch {args.vae_batch_size}, AdamW 2e-3 cosine, KL weight 1e-6 | final MSE {vae_result.losses[-1]:.5f} (pixels in [-1, 1]); scaling_factor {vae_result.scaling_factor:.4f} | {times["vae"]:.0f} s |
| UNet + text encoder | `diffblocks.training.train_text2image`: {args.unet_steps} steps, batch {args.batch_size}, LR {args.learning_rate} cosine (100 warm-up), `--train_text_encoder`, `--proportion_empty_prompts 0.1`, `--snr_gamma 5` | mean loss of the last 200 steps {sum(tail) / len(tail):.4f} (first step {unet_losses[0]:.4f}) | {times["unet"]:.0f} s |

Total size {_size_mb(out):.1f} MB. Prompt adherence: `python bench/prompt_adherence.py` (bench/RESULTS.md).
"""
    (out / "README.md").write_text(readme)
    print(readme)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
