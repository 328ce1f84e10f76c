"""Training the demo model's AutoencoderKL from scratch: pixel reconstruction + a small KL term.

The diffusers training guides start from a pretrained VAE and have no VAE recipe, so this is ours: the
objective of the KL-regularised autoencoder of the latent-diffusion paper without its perceptual and adversarial
terms (the images are flat-colored shapes, where a pixel loss is enough):

    loss = mean |x - D(z)|^2 + kl_weight * mean KL(q(z|x) || N(0, I)),   z ~ q(z|x)

After training, `scaling_factor` is set to 1 / std of the latents over the data set (what SD's 0.18215 is for
its VAE), so that the UNet trains on latents of unit variance.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["VaeTrainingResult", "load_images", "train_vae"]

logger = logging.getLogger(__name__)


@dataclass
class VaeTrainingResult:
    vae: Any
    losses: list[float]
    scaling_factor: float


def load_images(folder: str | Path) -> torch.Tensor:
    """Every image listed in `folder`/metadata.jsonl as one (N, 3, H, W) tensor in [-1, 1]."""
    import json

    import numpy as np
    from PIL import Image

    folder = Path(folder)
    names = [json.loads(line)["file_name"] for line in (folder / "metadata.jsonl").read_text().splitlines() if line]
    arrays = [np.asarray(Image.open(folder / n).convert("RGB"), dtype=np.float32) for n in names]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def train_vae(config: dict[str, Any], images: torch.Tensor, steps: int, batch_size: int = 32, lr: float = 2e-3,
              kl_weight: float = 1e-6, seed: int = 0, progress: bool = True) -> VaeTrainingResult:
    """Train an `AutoencoderKL.from_config(config)` on `images` ((N, 3, H, W) in [-1, 1]); linear warm-up over
    min(100, steps / 10) steps, then cosine decay."""
    from tqdm.auto import tqdm

    from ..components.models import AutoencoderKL

    torch.manual_seed(seed)
    order = random.Random(seed)
    vae = AutoencoderKL.from_config(config)
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, min(100, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    indices: list[int] = []
    bar = tqdm(range(steps), desc="vae", disable=not progress)
    for _ in bar:
        if len(indices) < batch_size:
            fresh = list(range(len(images)))
            order.shuffle(fresh)
            indices += fresh
        batch = images[indices[:batch_size]]
        del indices[:batch_size]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator)).sample
        mse = torch.mean((recon - batch) ** 2)
        kl = torch.mean(posterior.kl()) / posterior.mean[0].numel()
        loss = mse + kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(mse))
        bar.set_postfix(mse=f"{losses[-1]:.4f}", kl=f"{float(kl):.1f}")
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i:i + 256]).latent_dist.sample(generator)
                             for i in range(0, len(images), 256)])
    scaling_factor = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    logger.info("VAE: final mse %.5f, latent std %.3f -> scaling_factor %.4f", losses[-1], 1 / scaling_factor,
                scaling_factor)
    return VaeTrainingResult(vae, losses, scaling_factor)
