"""Full-size SD 1.5 / SDXL UNet and SD VAE configs (random weights) against the reference, at tiny resolution.

Weights are views into shared random pools (no multi-GB init) and both models use the same tensors, so the tests
stay fast and small while exercising the real head counts, depth lists and embedding sizes.
"""

from __future__ import annotations

import math

import pytest
import torch
from model_fixtures import SD15_UNET_FULL, SD_VAE_FULL, SDXL_UNET_FULL, assert_matches, unet_inputs

from diffblocks.components.models import AutoencoderKL, UNet2DConditionModel

pytestmark = pytest.mark.slow


def _aliased_weights(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Weights as views into a few shared random pools: no multi-GB init, one small copy in memory.

    Matrices get fan-in scaled values (scale rounded to a power of two so a handful of pools suffice); norm
    weights sit near 1, biases near 0.
    """
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(32 << 20, generator=gen)
    vectors = torch.randn(1 << 16, generator=gen) * 0.1
    ones = vectors + 1.0
    pools: dict[int, torch.Tensor] = {}
    weights = {}
    for i, (name, p) in enumerate(model.named_parameters()):
        n = p.numel()
        if p.ndim >= 2:
            k = round(math.log2(p[0].numel() ** -0.5))
            if k not in pools:
                pools[k] = base * 2.0**k
            pool = pools[k]
        else:
            pool = ones if "norm" in name and name.endswith("weight") else vectors
        offset = (i * 7919) % (pool.numel() - n + 1)
        weights[name] = pool[offset:offset + n].view(p.shape)
    return weights


def _pair(kind: str, config: dict, ours_cls, seed: int):
    import diffusers
    from accelerate import init_empty_weights

    with init_empty_weights():
        ref = getattr(diffusers, kind)(**config)
        ours = ours_cls.from_config(config)
    weights = _aliased_weights(ref, seed)
    ref.load_state_dict(weights, strict=True, assign=True)
    ours.load_state_dict(weights, strict=True, assign=True)
    return ref.eval(), ours.eval()


def test_sd15_unet_full_config():
    ref, ours = _pair("UNet2DConditionModel", SD15_UNET_FULL, UNet2DConditionModel, seed=1)
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters())
    inputs = unet_inputs(SD15_UNET_FULL, batch=1, size=8, seq=77)
    with torch.no_grad():
        assert_matches(ours(**inputs).sample, ref(**inputs).sample, what="SD1.5 UNet")


def test_sdxl_unet_full_config():
    ref, ours = _pair("UNet2DConditionModel", SDXL_UNET_FULL, UNet2DConditionModel, seed=2)
    inputs = unet_inputs(SDXL_UNET_FULL, batch=1, size=8, seq=77)
    with torch.no_grad():
        assert_matches(ours(**inputs).sample, ref(**inputs).sample, what="SDXL UNet")


def test_sd_vae_full_config():
    ref, ours = _pair("AutoencoderKL", SD_VAE_FULL, AutoencoderKL, seed=3)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = ref.encode(x).latent_dist.mode()
        assert_matches(ours.encode(x).latent_dist.mode(), z, what="VAE encode")
        assert_matches(ours.decode(z).sample, ref.decode(z).sample, what="VAE decode")
