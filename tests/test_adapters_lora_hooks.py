"""A LoRA'd UNet under the guiders' layer-skip hooks (PAG's attention-score skip, SLG's block skip) matches the
reference UNet with the same LoRA under its hooks."""

from __future__ import annotations

import pytest
import torch
from adapter_fixtures import UNET_TARGETS, random_lora
from model_fixtures import SDXL_UNET, assert_matches, save_reference, unet_inputs

from diffblocks.components.models import UNet2DConditionModel
from diffblocks.guiders import LayerSkipConfig
from diffblocks.guiders.hooks import apply_layer_skip

pytest.importorskip("diffusers")
MID = "mid_block.attentions.0.transformer_blocks"


@pytest.mark.parametrize("flags", [dict(skip_attention=False, skip_attention_scores=True, skip_ff=False),
                                   dict(skip_attention=True, skip_ff=True)], ids=["pag-scores", "slg-block"])
def test_lora_under_layer_skip_hooks_matches_reference(tmp_path, flags) -> None:
    from diffusers.hooks import HookRegistry
    from diffusers.hooks import LayerSkipConfig as RefLayerSkipConfig
    from diffusers.hooks.layer_skip import _apply_layer_skip_hook

    ref = save_reference("UNet2DConditionModel", SDXL_UNET, tmp_path / "unet", seed=5)
    ours = UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
    state, _ = random_lora(ref, UNET_TARGETS, seed=7)
    ref.load_lora_adapter({f"unet.{k}": v for k, v in state.items()}, prefix="unet", adapter_name="l")
    ours.load_lora_adapter({f"unet.{k}": v for k, v in state.items()}, adapter_name="l")
    inputs = unet_inputs(SDXL_UNET)
    with torch.no_grad():
        plain = ours(**inputs).sample
        assert_matches(plain, ref(**inputs).sample, what="LoRA forward")
        with apply_layer_skip(ours, LayerSkipConfig(indices=[1], fqn=MID, **flags)):
            got = ours(**inputs).sample
        _apply_layer_skip_hook(ref, RefLayerSkipConfig(indices=[1], fqn=MID, **flags), name="skip")
        expected = ref(**inputs).sample
        HookRegistry.check_if_exists_or_initialize(ref).remove_hook("skip", recurse=True)
    assert (got - plain).abs().max() > 1e-4
    assert_matches(got, expected, what=str(flags))
