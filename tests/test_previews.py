"""Previews: least-squares latent-to-RGB fitting, the projection, and the preview callback in real pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_flux import MAX_SEQUENCE_LENGTH, build_flux
from fixtures_sd import build_sd15, build_sdxl

from diffblocks import ModularPipeline
from diffblocks.presets.previews import (
    LATENT_RGB,
    LatentRGB,
    PreviewCallback,
    fit_latent_rgb,
    latent_family,
    projection_error,
    vae_decode_latents,
)


def test_fit_recovers_a_linear_decoder_exactly():
    # a decoder that is exactly linear per latent pixel (then upsampled 8x): the fit must recover it
    torch.manual_seed(0)
    weight, bias = torch.randn(4, 3), torch.randn(3)

    def decode(latents):
        rgb = torch.einsum("bchw,cr->brhw", latents, weight) + bias[None, :, None, None]
        return torch.nn.functional.interpolate(rgb, scale_factor=8, mode="nearest")

    latents = torch.randn(2, 4, 6, 5)
    fitted = fit_latent_rgb(latents, decode)
    assert torch.allclose(torch.tensor(fitted.weight), weight, atol=1e-4)
    assert torch.allclose(torch.tensor(fitted.bias), bias, atol=1e-4)
    decoded = ((decode(latents) + 1) / 2).clamp(0, 1)
    assert projection_error(fitted, latents, decoded) < 1e-5


def test_published_factors_shapes_and_projection_range():
    assert {k: len(v.weight) for k, v in LATENT_RGB.items()} == {"sd": 4, "sdxl": 4, "flux": 16}
    out = LATENT_RGB["sdxl"].project(torch.randn(1, 4, 3, 3) * 10)
    assert out.shape == (1, 3, 3, 3) and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="16 channels got latents with 4 channels"):
        LATENT_RGB["flux"].project(torch.randn(1, 4, 2, 2))


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    pipe = ModularPipeline.from_pretrained(str(build_sd15(tmp_path_factory.mktemp("previews"))))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_preview_callback_projection_and_vae_every_k(sd):
    seen = []
    callback = PreviewCallback(lambda i, t, images: seen.append((i, images)), every=2, vae_every=3)
    out = sd(prompt="a red cat", num_inference_steps=5, height=32, width=32, output_type="np", output="images",
             generator=torch.Generator().manual_seed(0), callback_on_step_end=callback)
    steps = len(sd.scheduler.timesteps)
    expected = [i for i in range(steps) if (i + 1) % 2 == 0 or (i + 1) % 3 == 0]
    assert [i for i, _ in seen] == expected
    sizes = {i: images[0].size for i, images in seen}
    latent = 32 // 2 ** (len(sd.vae.config.block_out_channels) - 1)
    assert sizes[1] == (latent, latent)  # projection: one pixel per latent
    assert sizes[2] == (32, 32)  # VAE decode: the image size
    # the VAE preview after the last step is the final image (same decode, 8-bit rounding)
    last_index, last = seen[-1]
    assert last_index == steps - 1 and (steps % 3 == 0)
    final = (out[0] * 255).round().astype(np.uint8)
    assert np.abs(np.asarray(last[0]).astype(int) - final.astype(int)).max() <= 1


def test_fitted_factors_beat_a_constant_on_a_fixture_vae(sd):
    # least squares against the tiny SD VAE's decoder on latents of smooth images; error vs the full decode
    torch.manual_seed(0)
    images = torch.nn.functional.interpolate(torch.rand(4, 3, 4, 4) * 2 - 1, size=32, mode="bilinear")
    vae = sd.vae
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
        decoded = vae_decode_latents(vae, latents, "sd")
    fitted = fit_latent_rgb(latents, lambda x: vae_decode_latents(vae, x, "sd") * 2 - 1)
    mean = decoded.mean(dim=(0, 2, 3)) * 2 - 1
    constant = LatentRGB(((0.0, 0.0, 0.0),) * 4, tuple(float(v) for v in mean))
    assert projection_error(fitted, latents, decoded) < projection_error(constant, latents, decoded)


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_family_detection_and_packed_flux_latents(family, tmp_path):
    if family == "sdxl":
        pipe = ModularPipeline.from_pretrained(str(build_sdxl(tmp_path)))
        kwargs = {}
    else:
        pipe = ModularPipeline.from_pretrained(str(build_flux(tmp_path)))
        kwargs = {"max_sequence_length": MAX_SEQUENCE_LENGTH}
    pipe.load_components(torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert latent_family(pipe) == family
    seen = []
    pipe(prompt="a red cat", num_inference_steps=2, height=32, width=32, output_type="latent", output="images",
         generator=torch.Generator().manual_seed(0),
         callback_on_step_end=PreviewCallback(lambda i, t, images: seen.append(images[0].size), vae_every=2),
         **kwargs)
    latent = 32 // 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    assert seen == [(latent, latent), (32, 32)]
