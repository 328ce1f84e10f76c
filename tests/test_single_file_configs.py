"""Shipped standard configs (single files without config=) and the full-size SD 1.5 round trip."""

from __future__ import annotations

import json
import logging
from importlib import resources

import pytest
import torch
from model_fixtures import SD15_UNET_FULL, SD_VAE_FULL, SDXL_UNET_FULL
from safetensors.torch import save_file
from single_file_fixtures import unet_to_ldm, vae_to_ldm

from diffblocks import ModularPipeline
from diffblocks.components import models, schedulers
from diffblocks.components.single_file import shipped_config

CONFIGS = resources.files("diffblocks.components.single_file").joinpath("configs")
NAMES = sorted(p.name[:-5] for p in CONFIGS.joinpath("components").iterdir() if p.name.endswith(".json"))


@pytest.mark.parametrize("name", NAMES)
def test_shipped_config_builds_its_class(name):
    from accelerate import init_empty_weights

    values = shipped_config(name)
    class_name = values.pop("_class_name")
    if hasattr(models, class_name):
        cls = getattr(models, class_name)
        ignored = {"act_fn", "center_input_sample", "downsample_padding", "flip_sin_to_cos", "freq_shift",
                   "mid_block_scale_factor", "norm_eps", "addition_embed_type_num_heads", "controlnet_conditioning_channel_order",
                   "force_upcast", "mid_block_add_attention"}
        unknown = set(values) - set(cls.init_parameter_names()) - ignored
        assert not unknown, f"{name}: keys {unknown} are not {class_name} arguments"
        with init_empty_weights():
            model = cls.from_config(values)
        assert model.num_parameters() > 1e7
    elif hasattr(schedulers, class_name):
        getattr(schedulers, class_name).from_config(values)
    else:
        import transformers

        cls = getattr(transformers, class_name)
        config = cls.config_class(**{k: v for k, v in values.items() if k != "model_type"})
        assert config.hidden_size in (768, 1024, 1280)


def test_shipped_configs_match_the_published_values():
    for name, published in (("sd15_unet", SD15_UNET_FULL), ("sdxl_unet", SDXL_UNET_FULL), ("sd_vae", SD_VAE_FULL)):
        shipped = shipped_config(name)
        assert {k: shipped[k] for k in published} == published, name
    families = json.loads(CONFIGS.joinpath("families.json").read_text())
    for components in families.values():
        for component, config in components.items():
            if config and not component.startswith("_") and not component.startswith("tokenizer"):
                shipped_config(config)  # every family names configs that exist


def _random_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen, dtype=torch.float32).to(torch.float16)
            for k, v in model.state_dict(keep_vars=True).items()}


@pytest.mark.slow
def test_full_size_sd15_round_trip_without_config(tmp_path, caplog):
    """diffusers-layout full-size SD 1.5 UNet + VAE (random fp16) -> LDM single file -> ours: identical tensors,
    from the shipped standard configs; the missing text encoder and tokenizer are named in a warning."""
    import diffusers
    from accelerate import init_empty_weights

    with init_empty_weights():
        unet = diffusers.UNet2DConditionModel(**SD15_UNET_FULL)
        vae = diffusers.AutoencoderKL(**SD_VAE_FULL)
    unet_state, vae_state = _random_state(unet, 0), _random_state(vae, 1)
    path = tmp_path / "sd15-full.safetensors"
    tensors = unet_to_ldm(unet_state, SD15_UNET_FULL)
    tensors.update(vae_to_ldm(vae_state, SD_VAE_FULL))
    save_file(tensors, str(path))
    del tensors
    with caplog.at_level(logging.WARNING):
        pipe = ModularPipeline.from_single_file(path, torch_dtype=torch.float16)
    for model, expected in ((pipe.unet, unet_state), (pipe.vae, vae_state)):
        got = model.state_dict()
        assert set(got) == set(expected)
        assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert type(pipe.scheduler).__name__ == "PNDMScheduler" and pipe.vae.config.scaling_factor == 0.18215
    assert "text_encoder" in caplog.text and "tokenizer" in caplog.text and "update_components" in caplog.text
