"""UNet2DConditionModel parity with the reference implementation on tiny SD-family configs."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import (
    INPAINT_UNET,
    SD2_UNET,
    SD15_UNET,
    SDXL_UNET,
    assert_matches,
    save_reference,
    unet_inputs,
)

from diffblocks.components.models import UNet2DConditionModel

CONFIGS = {"sd15": SD15_UNET, "sd2": SD2_UNET, "sdxl": SDXL_UNET, "inpaint": INPAINT_UNET}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("unets")
    out = {}
    for name, config in CONFIGS.items():
        ref = save_reference("UNet2DConditionModel", config, root / name, seed=len(name))
        out[name] = (root / name, ref)
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_matches_reference(folders, name):
    path, ref = folders[name]
    ours = UNet2DConditionModel.from_pretrained(path)
    inputs = unet_inputs(CONFIGS[name])
    with torch.no_grad():
        expected = ref(**inputs).sample
        got = ours(**inputs).sample
    assert_matches(got, expected, what=name)


def test_layer_paths_and_parameter_names_match_reference(folders):
    path, ref = folders["sdxl"]
    ours = UNet2DConditionModel.from_pretrained(path)
    assert set(ours.state_dict()) == set(ref.state_dict())
    ref_attn = {n for n, m in ref.named_modules() if type(m).__name__ == "Attention"}
    ours_attn = {n for n, m in ours.named_modules() if type(m).__name__ == "Attention"}
    assert ours_attn == ref_attn
    assert "mid_block.attentions.0.transformer_blocks.0.attn1" in ours_attn
    block = ours.get_submodule("mid_block.attentions.0.transformer_blocks.1")
    assert {"attn1", "attn2", "ff"} <= {n for n, _ in block.named_children()}


@pytest.mark.parametrize("timestep", [999, 250.5, "0d"])
def test_scalar_timesteps_and_odd_sizes(folders, timestep):
    path, ref = folders["sd15"]
    ours = UNet2DConditionModel.from_pretrained(path)
    inputs = unet_inputs(SD15_UNET, size=13)  # not divisible by the up factor: upsample_size path
    inputs["timestep"] = torch.tensor(321) if timestep == "0d" else timestep
    with torch.no_grad():
        expected = ref(**inputs).sample
        got = ours(**inputs, return_dict=False)[0]
    assert got.shape == (2, 4, 13, 13)
    assert_matches(got, expected)


def test_encoder_attention_mask_and_timestep_cond(tmp_path):
    config = {**SD15_UNET, "time_cond_proj_dim": 6, "time_embedding_act_fn": "silu"}
    ref = save_reference("UNet2DConditionModel", config, tmp_path, seed=3)
    ours = UNet2DConditionModel.from_pretrained(tmp_path)
    inputs = unet_inputs(config)
    inputs["encoder_attention_mask"] = torch.tensor([[1, 1, 1, 0, 0, 1, 0], [1, 1, 1, 1, 1, 1, 1]])
    inputs["timestep_cond"] = torch.randn(2, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(**inputs).sample
        got = ours(**inputs).sample
        unmasked = ours(**{**inputs, "encoder_attention_mask": None}).sample
    assert_matches(got, expected)
    assert not torch.allclose(got[0], unmasked[0])  # the mask matters for the masked sample


def test_gradient_checkpointing_gives_same_gradients(folders):
    path, _ = folders["sdxl"]
    model = UNet2DConditionModel.from_pretrained(path).train()
    inputs = unet_inputs(SDXL_UNET, batch=1)
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        if enabled:
            model.enable_gradient_checkpointing()
        assert model.is_gradient_checkpointing == enabled
        model(**inputs).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert_matches(grads[1], grads[0], rel=1e-5, what="gradients")


def test_sdxl_requires_added_cond_kwargs(folders):
    path, _ = folders["sdxl"]
    model = UNet2DConditionModel.from_pretrained(path)
    inputs = unet_inputs(SDXL_UNET)
    inputs["added_cond_kwargs"] = {"text_embeds": inputs["added_cond_kwargs"]["text_embeds"]}
    with pytest.raises(ValueError, match="time_ids"):
        model(**inputs)


def test_unsupported_block_type_is_a_clear_error():
    with pytest.raises(ValueError, match="SimpleCrossAttnDownBlock2D.*CrossAttnDownBlock2D"):
        UNet2DConditionModel.from_config({**SD15_UNET, "down_block_types": ["SimpleCrossAttnDownBlock2D",
                                                                            "DownBlock2D"]})


def test_controlnet_residuals_must_come_in_pairs(folders):
    path, _ = folders["sd15"]
    model = UNet2DConditionModel.from_pretrained(path)
    inputs = unet_inputs(SD15_UNET)
    with pytest.raises(ValueError, match="pairs"):
        model(**inputs, mid_block_additional_residual=torch.zeros(2, 64, 8, 8))
