"""Perturbation guiders (PAG, SLG) on the Flux transformer: default layers, targeted effect, parity, no leftovers."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from diffusers.hooks import HookRegistry
from diffusers.hooks import LayerSkipConfig as RefLayerSkipConfig
from diffusers.hooks.layer_skip import _apply_layer_skip_hook
from model_fixtures import assert_matches, save_reference
from test_models_flux import FLUX_TINY, flux_inputs
from torch import nn

from diffblocks.components.models.flux_transformer import FluxTransformer2DModel
from diffblocks.guiders import (
    LayerSkipConfig,
    PerturbedAttentionGuidance,
    SkipLayerGuidance,
    apply_layer_skip,
    default_layer_stack,
)

logging.getLogger("diffusers").setLevel(logging.ERROR)

SCORES = dict(skip_attention=False, skip_attention_scores=True, skip_ff=False)
ATTENTION = dict(skip_attention=True, skip_ff=False)
FF = dict(skip_attention=False, skip_ff=True)
BLOCK = dict(skip_attention=True, skip_ff=True)


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    path = tmp_path_factory.mktemp("flux_guiders") / "transformer"
    ref = save_reference("FluxTransformer2DModel", FLUX_TINY, path, seed=21)
    # The reference's layer-skip hooks read `is_cross_attention`, which its FluxAttention lacks (AttributeError);
    # giving its attention modules the flag is the smallest change that lets its hooks run for a comparison.
    for module in ref.modules():
        if type(module).__name__ == "FluxAttention":
            module.is_cross_attention = False
    ours = FluxTransformer2DModel.from_pretrained(path)
    return ours, ref, flux_inputs(FLUX_TINY)


def _clean(model: nn.Module) -> bool:
    return all("forward" not in m.__dict__ for m in model.modules())


def _run(model, inputs, **overrides):
    with torch.no_grad():
        return model(**{**inputs, **overrides}).sample


def _guided_passes(guider, model, inputs, neg_pooled=None):
    """One denoise step's passes the way a Flux denoise loop runs them (prompt embeds cond / uncond)."""
    neg = torch.zeros_like(inputs["encoder_hidden_states"])
    neg_pooled = torch.zeros_like(inputs["pooled_projections"]) if neg_pooled is None else neg_pooled
    fields = {"hidden_states": inputs["hidden_states"], "timestep": inputs["timestep"], "guidance": inputs["guidance"],
              "encoder_hidden_states": (inputs["encoder_hidden_states"], neg),
              "pooled_projections": (inputs["pooled_projections"], neg_pooled)}
    preds = {}
    with torch.no_grad():
        for group in guider.prepare_passes(fields):
            with guider.perturbation(model, group):
                out = model(group.hidden_states, group.encoder_hidden_states, group.pooled_projections,
                            group.timestep, inputs["img_ids"], inputs["txt_ids"], group.guidance).sample
            preds.update(group.split(out))
    return preds


@pytest.mark.parametrize("cls", [PerturbedAttentionGuidance, SkipLayerGuidance], ids=["pag", "slg"])
def test_guiders_without_arguments_run_on_flux(flux, cls, caplog) -> None:
    ours, _, inputs = flux
    assert default_layer_stack(ours) == ("transformer_blocks", FLUX_TINY["num_layers"])
    plain = _run(ours, inputs)
    guider = cls(guidance_scale=3.0)
    guider.set_state(step=1, num_inference_steps=10, timestep=inputs["timestep"])
    with caplog.at_level(logging.INFO, logger="diffblocks.guiders"):
        preds = _guided_passes(guider, ours, inputs)
    assert set(preds) == {"pred_cond", "pred_uncond", "pred_cond_skip"}
    assert "perturbing transformer_blocks blocks [1]" in caplog.text
    # Batched passes (cond + uncond in one call) may change matmul blocking: equal to float rounding, not bitwise.
    torch.testing.assert_close(preds["pred_cond"], plain, rtol=0, atol=1e-5)
    assert (preds["pred_cond_skip"] - plain).abs().max() > 1e-3
    assert (preds["pred_uncond"] - plain).abs().max() > 1e-3
    guided = guider.combine(preds).pred
    expected = (preds["pred_uncond"] + 3.0 * (preds["pred_cond"] - preds["pred_uncond"])
                + guider._p_scale * (preds["pred_cond"] - preds["pred_cond_skip"]))
    torch.testing.assert_close(guided, expected)
    assert _clean(ours) and torch.equal(_run(ours, inputs), plain)


@pytest.mark.parametrize(("fqn", "index"), [("transformer_blocks", 1), ("single_transformer_blocks", 2)])
def test_skipping_a_whole_block_equals_removing_it(flux, fqn, index) -> None:
    ours, _, inputs = flux
    plain = _run(ours, inputs)
    with apply_layer_skip(ours, LayerSkipConfig(indices=[index], fqn=fqn, **BLOCK)):
        got = _run(ours, inputs)
    without = copy.deepcopy(ours)
    del getattr(without, fqn)[index]
    assert_matches(got, _run(without, inputs), rel=1e-6, what=f"{fqn}.{index} skipped")
    assert (got - plain).abs().max() > 1e-3
    assert _clean(ours) and torch.equal(_run(ours, inputs), plain)


class _PassThroughJointAttention(nn.Module):
    """Attention whose outputs are its inputs: what skip_attention means for a double-stream block."""

    def forward(self, hidden_states, encoder_hidden_states=None, **kwargs):
        return hidden_states, encoder_hidden_states


def test_skipping_joint_attention_passes_both_streams_through(flux) -> None:
    ours, _, inputs = flux
    plain = _run(ours, inputs)
    with apply_layer_skip(ours, LayerSkipConfig(indices=[0], fqn="transformer_blocks", **ATTENTION)):
        got = _run(ours, inputs)
    edited = copy.deepcopy(ours)
    edited.transformer_blocks[0].attn = _PassThroughJointAttention()
    assert_matches(got, _run(edited, inputs), rel=1e-6, what="joint attention skipped")
    assert (got - plain).abs().max() > 1e-3
    assert _clean(ours)


@pytest.mark.parametrize(("flags", "fqn", "index"), [
    (SCORES, "transformer_blocks", 1),
    (SCORES, "single_transformer_blocks", 0),
    (ATTENTION, "single_transformer_blocks", 2),
    (FF, "transformer_blocks", 0),
], ids=["pag-double", "pag-single", "attention-single", "ff-double"])
def test_layer_skip_matches_reference_hooks(flux, flags, fqn, index) -> None:
    ours, ref, inputs = flux
    plain = _run(ours, inputs)
    with apply_layer_skip(ours, LayerSkipConfig(indices=[index], fqn=fqn, **flags)):
        got = _run(ours, inputs)
    _apply_layer_skip_hook(ref, RefLayerSkipConfig(indices=[index], fqn=fqn, **flags), name="flux_test")
    try:
        expected = _run(ref, inputs)
    finally:
        HookRegistry.check_if_exists_or_initialize(ref).remove_hook("flux_test", recurse=True)
    assert (got - plain).abs().max() > 1e-3
    assert_matches(got, expected, what=f"{fqn}.{index} {flags}")
    assert _clean(ours) and torch.equal(_run(ours, inputs), plain)


def test_pag_default_layer_matches_reference_guider(flux) -> None:
    from diffusers import guiders as ref_guiders

    ours, ref, inputs = flux
    window = dict(perturbed_guidance_start=0.0, perturbed_guidance_stop=1.0, guidance_scale=4.0)
    mine = PerturbedAttentionGuidance(**window)  # no layers: the middle double-stream block
    theirs = ref_guiders.PerturbedAttentionGuidance(**window, perturbed_guidance_config=RefLayerSkipConfig(
        indices=[FLUX_TINY["num_layers"] // 2], fqn="transformer_blocks", **SCORES))
    for g in (mine, theirs):
        g.set_state(step=2, num_inference_steps=4, timestep=inputs["timestep"])
    neg = torch.zeros_like(inputs["encoder_hidden_states"])
    call = {k: v for k, v in inputs.items() if k != "encoder_hidden_states"}
    ref_preds = {}
    with torch.no_grad():
        for batch in theirs.prepare_inputs({"encoder_hidden_states": (inputs["encoder_hidden_states"], neg)}):
            theirs.prepare_models(ref)
            ref_preds[batch.__guidance_identifier__] = ref(**call, encoder_hidden_states=batch.encoder_hidden_states).sample
            theirs.cleanup_models(ref)
    my_preds = _guided_passes(mine, ours, inputs, neg_pooled=inputs["pooled_projections"])
    assert set(my_preds) == set(ref_preds) == {"pred_cond", "pred_uncond", "pred_cond_skip"}
    for key in ref_preds:
        assert_matches(my_preds[key], ref_preds[key], what=key)
    assert_matches(mine.combine(my_preds).pred, theirs.forward(**ref_preds).pred, what="guided")
    assert _clean(ours)
