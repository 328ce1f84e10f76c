"""AutoencoderKL parity with the reference: encode (mode / seeded sample), decode, tiling, slicing."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import FLUX_LIKE_VAE, SD_VAE, assert_matches, save_reference
from safetensors.torch import load_file, save_file

from diffblocks.components.models import AutoencoderKL


@pytest.fixture(scope="module")
def sd_vae(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae")
    ref = save_reference("AutoencoderKL", SD_VAE, path, seed=5)
    return path, ref


def _image(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def test_encode_decode_match_reference(sd_vae):
    path, ref = sd_vae
    ours = AutoencoderKL.from_pretrained(path)
    x = _image()
    with torch.no_grad():
        ref_post, our_post = ref.encode(x).latent_dist, ours.encode(x).latent_dist
        assert_matches(our_post.mode(), ref_post.mode(), what="posterior mode")
        assert_matches(our_post.std, ref_post.std, what="posterior std")
        ref_z = ref_post.sample(generator=torch.Generator().manual_seed(7))
        our_z = our_post.sample(generator=torch.Generator().manual_seed(7))
        assert_matches(our_z, ref_z, what="posterior sample")
        assert_matches(ours.decode(ref_z).sample, ref.decode(ref_z).sample, what="decode")
        assert_matches(ours(x).sample, ref(x).sample, what="forward")
    assert ours.config.scaling_factor == pytest.approx(0.18215)
    assert ours.config.force_upcast is True


def test_flux_like_vae_without_quant_convs(tmp_path):
    ref = save_reference("AutoencoderKL", FLUX_LIKE_VAE, tmp_path, seed=9)
    ours = AutoencoderKL.from_pretrained(tmp_path)
    assert ours.quant_conv is None and ours.post_quant_conv is None
    assert ours.config.shift_factor == pytest.approx(0.1159)
    x = _image(1)
    with torch.no_grad():
        z = ref.encode(x).latent_dist.mode()
        assert z.shape[1] == 16
        assert_matches(ours.encode(x).latent_dist.mode(), z)
        assert_matches(ours.decode(z).sample, ref.decode(z).sample)


def test_tiled_encode_and_decode_match_reference(sd_vae):
    path, ref = sd_vae
    ours = AutoencoderKL.from_pretrained(path)
    ref.enable_tiling()
    ours.enable_tiling()
    try:
        x = _image(1, size=56, seed=3)  # tiles of 32 with overlap: seams are blended
        with torch.no_grad():
            expected = ref.encode(x).latent_dist.mode()
            got = ours.encode(x).latent_dist.mode()
            assert_matches(got, expected, what="tiled encode")
            z = torch.randn(1, 4, 28, 28, generator=torch.Generator().manual_seed(4))
            assert_matches(ours.decode(z).sample, ref.decode(z).sample, what="tiled decode")
            ours.disable_tiling()
            assert not torch.allclose(ours.decode(z).sample, ref.decode(z).sample, atol=1e-4)  # tiling did something
    finally:
        ref.disable_tiling()


def test_sliced_encode_decode_equals_batched(sd_vae):
    path, _ = sd_vae
    ours = AutoencoderKL.from_pretrained(path)
    x = _image(3, seed=11)
    with torch.no_grad():
        batched = ours.encode(x).latent_dist.mode()
        dec = ours.decode(batched).sample
        ours.enable_slicing()
        assert_matches(ours.encode(x).latent_dist.mode(), batched, rel=1e-5)
        assert_matches(ours.decode(batched).sample, dec, rel=1e-5)


def test_generator_list_samples_per_image(sd_vae):
    path, _ = sd_vae
    ours = AutoencoderKL.from_pretrained(path)
    x = _image(2)
    with torch.no_grad():
        post = ours.encode(x).latent_dist
        both = post.sample(generator=[torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
        first = ours.encode(x[:1]).latent_dist.sample(generator=torch.Generator().manual_seed(1))
    assert_matches(both[:1], first)


def test_old_attention_key_names_load(sd_vae, tmp_path):
    """Checkpoints written before the attention rename (query/key/value/proj_attn) still load."""
    path, ref = sd_vae
    state = load_file(str(path / "diffusion_pytorch_model.safetensors"))
    renamed = {}
    for key, value in state.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if ".attentions.0." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
        renamed[key] = value
    assert any(".proj_attn." in k for k in renamed)
    save_file(renamed, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    ours = AutoencoderKL.from_pretrained(tmp_path)
    x = _image(1)
    with torch.no_grad():
        assert_matches(ours(x).sample, ref(x).sample)
