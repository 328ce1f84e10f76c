"""ControlNetModel parity with the reference, and its residuals flowing into the UNet."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import CONTROLNET, SD15_UNET, assert_matches, reference_model, save_reference, unet_inputs

from diffblocks.components.models import ControlNetModel, UNet2DConditionModel


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("controlnet")
    # perturbed weights: the zero-initialised output convs are non-zero, so the residuals matter
    ref_cn = save_reference("ControlNetModel", CONTROLNET, root / "controlnet", seed=21)
    ref_unet = save_reference("UNet2DConditionModel", SD15_UNET, root / "unet", seed=22)
    return root, ref_cn, ref_unet


def _inputs(seed: int = 5) -> dict:
    kwargs = unet_inputs(SD15_UNET, seed=seed)
    kwargs["controlnet_cond"] = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(seed))
    return kwargs


@pytest.mark.parametrize("guess_mode", [False, True])
def test_residuals_match_reference(pair, guess_mode):
    root, ref_cn, _ = pair
    ours = ControlNetModel.from_pretrained(root / "controlnet")
    kwargs = _inputs()
    with torch.no_grad():
        ref_out = ref_cn(**kwargs, conditioning_scale=0.7, guess_mode=guess_mode)
        our_out = ours(**kwargs, conditioning_scale=0.7, guess_mode=guess_mode)
    assert len(our_out.down_block_res_samples) == len(ref_out.down_block_res_samples) == 6
    for i, (got, exp) in enumerate(zip(our_out.down_block_res_samples, ref_out.down_block_res_samples)):
        assert_matches(got, exp, what=f"down residual {i}")
    assert_matches(our_out.mid_block_res_sample, ref_out.mid_block_res_sample, what="mid residual")


def test_residuals_flow_into_unet(pair):
    root, ref_cn, ref_unet = pair
    cn = ControlNetModel.from_pretrained(root / "controlnet")
    unet = UNet2DConditionModel.from_pretrained(root / "unet")
    kwargs = _inputs(seed=8)
    unet_kwargs = {k: v for k, v in kwargs.items() if k != "controlnet_cond"}
    with torch.no_grad():
        r_down, r_mid = ref_cn(**kwargs, return_dict=False)
        expected = ref_unet(**unet_kwargs, down_block_additional_residuals=r_down,
                            mid_block_additional_residual=r_mid).sample
        down, mid = cn(**kwargs, return_dict=False)
        got = unet(**unet_kwargs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        plain = unet(**unet_kwargs).sample
    assert_matches(got, expected)
    assert (got - plain).abs().max() > 1e-3 * plain.abs().max()  # the control actually changed the prediction


def test_from_unet_matches_reference(pair):
    root, _, _ = pair
    ref_unet = reference_model("UNet2DConditionModel", SD15_UNET, seed=22)
    from diffusers import ControlNetModel as RefControlNet

    unet = UNet2DConditionModel.from_pretrained(root / "unet")
    ours = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    torch.manual_seed(0)
    ref = RefControlNet.from_unet(ref_unet, conditioning_embedding_out_channels=(8, 16))
    # the conditioning embedding is fresh random init in both: copy it, everything else comes from the UNet
    ours.controlnet_cond_embedding.load_state_dict(ref.controlnet_cond_embedding.state_dict())
    with torch.no_grad():
        for p in list(ours.controlnet_down_blocks.parameters()) + list(ours.controlnet_mid_block.parameters()):
            assert p.abs().max() == 0  # zero-initialised output convs
    assert set(ours.state_dict()) == set(ref.state_dict())
    for key, value in ref.state_dict().items():
        if not key.startswith("controlnet_cond_embedding"):
            assert torch.equal(ours.state_dict()[key], value), key
    assert list(ours.config.block_out_channels) == list(unet.config.block_out_channels)
