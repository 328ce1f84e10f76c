"""Perturbation hooks: targeted effect, parity with the reference's hooks, and nothing left behind."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from diffusers import guiders as ref_guiders
from diffusers.hooks import HookRegistry
from diffusers.hooks import LayerSkipConfig as RefLayerSkipConfig
from diffusers.hooks.layer_skip import _apply_layer_skip_hook
from diffusers.hooks.smoothed_energy_guidance_utils import (
    SmoothedEnergyGuidanceConfig as RefSEGConfig,
)
from diffusers.hooks.smoothed_energy_guidance_utils import (
    _apply_smoothed_energy_guidance_hook,
    _gaussian_blur_2d,
)
from model_fixtures import SDXL_UNET, assert_matches, save_reference, unet_inputs
from torch import nn

from diffblocks.components.models import UNet2DConditionModel
from diffblocks.guiders import (
    LayerSkipConfig,
    PerturbedAttentionGuidance,
    SkipLayerGuidance,
    SmoothedEnergyGuidance,
    SmoothedEnergyGuidanceConfig,
    apply_layer_skip,
    apply_smoothed_energy,
    default_layer_stack,
)
from diffblocks.guiders.hooks import gaussian_blur_queries

logging.getLogger("diffusers").setLevel(logging.ERROR)
MID = "mid_block.attentions.0.transformer_blocks"


# -- a toy model with the UNet's attribute structure ------------------------------------------------
class ToyAttention(nn.Module):
    def __init__(self, dim: int, cross: bool) -> None:
        super().__init__()
        self.heads, self.is_cross_attention = 2, cross
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, hidden_states, encoder_hidden_states=None):
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        b, n, d = hidden_states.shape

        def heads(x):
            return x.view(b, -1, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.to_q(hidden_states)), heads(self.to_k(ctx)), heads(self.to_v(ctx)))
        return self.to_out[0](out.transpose(1, 2).reshape(b, n, d))


class ToyBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attn1, self.attn2 = ToyAttention(dim, False), ToyAttention(dim, True)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.GELU())

    def forward(self, hidden_states, encoder_hidden_states=None):
        hidden_states = self.attn1(hidden_states) + hidden_states
        hidden_states = self.attn2(hidden_states, encoder_hidden_states) + hidden_states
        return self.ff(hidden_states) + hidden_states


class ToyMid(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList([ToyBlock(dim) for _ in range(2)])


class ToyUNet(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.down = ToyBlock(dim)
        self.mid_block = nn.Module()
        self.mid_block.attentions = nn.ModuleList([ToyMid(dim)])

    def forward(self, x, ctx):
        x = self.down(x, ctx)
        for block in self.mid_block.attentions[0].transformer_blocks:
            x = block(x, ctx)
        return x


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return ToyUNet().eval(), torch.randn(2, 9, 8), torch.randn(2, 5, 8)


def _record_calls(model):
    """Names of modules whose original forward ran (via forward pre-hooks, which swapped forwards skip)."""
    calls = []
    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: calls.append(n)) for n, m in model.named_modules() if n]
    return calls, handles


def test_default_layers_detected_by_structure(toy) -> None:
    model, _, _ = toy
    assert default_layer_stack(model) == (MID, 2)
    dit = nn.Module()
    dit.transformer_blocks = nn.ModuleList([ToyBlock(8) for _ in range(5)])
    assert default_layer_stack(dit) == ("transformer_blocks", 5)
    with pytest.raises(ValueError, match="cannot find transformer blocks in Linear"):
        default_layer_stack(nn.Linear(2, 2))


@pytest.mark.parametrize("kind", ["scores", "attention", "ff", "block"])
def test_toy_perturbation_targets_only_configured_layers(toy, kind) -> None:
    model, x, ctx = toy
    flags = {"scores": dict(skip_attention=False, skip_attention_scores=True, skip_ff=False),
             "attention": dict(skip_attention=True, skip_ff=False),
             "ff": dict(skip_attention=False, skip_ff=True),
             "block": dict(skip_attention=True, skip_ff=True)}[kind]
    with torch.no_grad():
        plain = model(x, ctx)
        handle = apply_layer_skip(model, LayerSkipConfig(indices=[1], fqn=MID, **flags))
        perturbed = model(x, ctx)
        # the expected output, computed by hand from the unperturbed submodules
        h = model.down(x, ctx)
        h = model.mid_block.attentions[0].transformer_blocks[0](h, ctx)
        blk = model.mid_block.attentions[0].transformer_blocks[1]
        if kind == "block":
            expected = h
        else:
            if kind == "scores":
                a1 = blk.attn1.to_out[0](blk.attn1.to_v(h))  # identity scores: per-head values, merged
            elif kind == "attention":
                a1 = h
            else:
                a1 = blk.attn1(h)
            h = a1 + h
            h = blk.attn2(h, ctx) + h
            expected = (h if kind == "ff" else blk.ff(h)) + h
        handle.remove()
        after = model(x, ctx)
    assert not torch.allclose(perturbed, plain)
    torch.testing.assert_close(perturbed, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(after, plain)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_toy_hooks_leave_no_trace_on_error(toy) -> None:
    model, x, ctx = toy
    with pytest.raises(ValueError, match="out of range for 'mid_block.attentions.0.transformer_blocks', which has 2"):
        apply_layer_skip(model, LayerSkipConfig(indices=[0, 5], fqn=MID))
    with pytest.raises(ValueError, match="no nn.ModuleList at 'nope'"):
        apply_layer_skip(model, LayerSkipConfig(indices=[0], fqn="nope"))
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_guider_perturbation_context_and_prepare_models(toy) -> None:
    model, x, ctx = toy
    guider = PerturbedAttentionGuidance(perturbed_guidance_start=0.0, perturbed_guidance_stop=1.0)
    guider.set_state(step=1, num_inference_steps=4, timestep=0)
    with torch.no_grad():
        plain = model(x, ctx)
        groups = guider.prepare_passes({"x": x, "ctx": (ctx, ctx)})
        outs = {}
        for group in groups:
            with guider.perturbation(model, group):
                outs.update(group.split(model(group.x, group.ctx)))
        batches = guider.prepare_inputs({"ctx": (ctx, ctx)})
        ref_style = {}
        for batch in batches:
            guider.prepare_models(model)
            ref_style[batch.__guidance_identifier__] = model(x, batch.ctx)
            guider.cleanup_models(model)
    torch.testing.assert_close(outs["pred_cond"], plain)
    torch.testing.assert_close(outs["pred_uncond"], plain)
    assert not torch.allclose(outs["pred_cond_skip"], plain)
    for key in outs:
        torch.testing.assert_close(ref_style[key], outs[key])
    assert all("forward" not in m.__dict__ for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x, ctx), plain)


def test_seg_blur_matches_reference_function() -> None:
    torch.manual_seed(0)
    q = torch.randn(2, 70, 6)  # 64 square tokens + 6 extra
    # the reference applies its Gaussian when sigma exceeds the threshold and the mean otherwise
    torch.testing.assert_close(gaussian_blur_queries(q.clone(), 1.0, 1e9),
                               _gaussian_blur_2d(q.clone(), 7, 1.0, 0.5))
    torch.testing.assert_close(gaussian_blur_queries(q.clone(), 5.0, 1.0),
                               _gaussian_blur_2d(q.clone(), 31, 5.0, 1e9))


# -- our UNet against the reference UNet ------------------------------------------------------------
@pytest.fixture(scope="module")
def unets(tmp_path_factory):
    path = tmp_path_factory.mktemp("guider_unet") / "unet"
    ref = save_reference("UNet2DConditionModel", SDXL_UNET, path, seed=5)
    ours = UNet2DConditionModel.from_pretrained(path).eval()
    return ours, ref, unet_inputs(SDXL_UNET)


def _no_ref_hooks(model) -> bool:
    return all(not getattr(m, "_diffusers_hook", None) or not m._diffusers_hook.hooks for m in model.modules())


@pytest.mark.parametrize("flags", [
    dict(skip_attention=False, skip_attention_scores=True, skip_ff=False),
    dict(skip_attention=True, skip_ff=False),
    dict(skip_attention=False, skip_ff=True),
    dict(skip_attention=True, skip_ff=True),
], ids=["scores", "attention", "ff", "block"])
def test_unet_layer_skip_matches_reference_hooks(unets, flags) -> None:
    ours, ref, inputs = unets
    with torch.no_grad():
        plain = ours(**inputs).sample
        with apply_layer_skip(ours, LayerSkipConfig(indices=[1], fqn=MID, **flags)):
            got = ours(**inputs).sample
        _apply_layer_skip_hook(ref, RefLayerSkipConfig(indices=[1], fqn=MID, **flags), name="test_skip")
        expected = ref(**inputs).sample
        HookRegistry.check_if_exists_or_initialize(ref).remove_hook("test_skip", recurse=True)
        after = ours(**inputs).sample
    assert (got - plain).abs().max() > 1e-4
    assert_matches(got, expected, what=str(flags))
    assert torch.equal(after, plain) and _no_ref_hooks(ref)
    assert all("forward" not in m.__dict__ for m in ours.modules())


@pytest.mark.parametrize("name", ["pag", "slg"])
def test_unet_guider_default_layers_match_reference_guider(unets, name) -> None:
    ours, ref, inputs = unets
    window = {"pag": dict(perturbed_guidance_start=0.0, perturbed_guidance_stop=1.0),
              "slg": dict(skip_layer_guidance_start=0.0, skip_layer_guidance_stop=1.0)}[name]
    if name == "pag":
        mine = PerturbedAttentionGuidance(**window)  # no layers: picks the mid block from the model
        theirs = ref_guiders.PerturbedAttentionGuidance(**window, perturbed_guidance_config=RefLayerSkipConfig(
            indices=[0, 1], fqn=MID, skip_attention=False, skip_attention_scores=True, skip_ff=False))
    else:
        mine = SkipLayerGuidance(**window)
        theirs = ref_guiders.SkipLayerGuidance(**window, skip_layer_config=RefLayerSkipConfig(indices=[0, 1], fqn=MID))
    for g in (mine, theirs):
        g.set_state(step=2, num_inference_steps=4, timestep=inputs["timestep"])
    data = {"encoder_hidden_states": (inputs["encoder_hidden_states"], torch.zeros_like(inputs["encoder_hidden_states"]))}
    call = {k: v for k, v in inputs.items() if k != "encoder_hidden_states"}
    with torch.no_grad():
        ref_preds = {}
        for batch in theirs.prepare_inputs(data):
            theirs.prepare_models(ref)
            ref_preds[batch.__guidance_identifier__] = ref(**call, encoder_hidden_states=batch.encoder_hidden_states).sample
            theirs.cleanup_models(ref)
        my_preds = {}
        for group in mine.prepare_passes({**data, "sample": inputs["sample"], "timestep": inputs["timestep"],
                                          "added_cond_kwargs": inputs["added_cond_kwargs"]}):
            with mine.perturbation(ours, group):
                out = ours(group.sample, group.timestep, encoder_hidden_states=group.encoder_hidden_states,
                           added_cond_kwargs=group.added_cond_kwargs).sample
            my_preds.update(group.split(out))
    assert set(my_preds) == set(ref_preds) == {"pred_cond", "pred_uncond", "pred_cond_skip"}
    for key in ref_preds:
        assert_matches(my_preds[key], ref_preds[key], rel=1e-5, what=key)
    assert (my_preds["pred_cond_skip"] - my_preds["pred_cond"]).abs().max() > 1e-4
    theirs_out, mine_out = theirs.forward(**ref_preds), mine.combine(my_preds)
    assert_matches(mine_out.pred, theirs_out.pred, what="guided")
    assert _no_ref_hooks(ref) and all("forward" not in m.__dict__ for m in ours.modules())


def test_unet_seg_matches_reference_hook(unets) -> None:
    ours, ref, inputs = unets
    # the reference hook runs its Gaussian for sigma above its fixed threshold (9999.9)
    sigma = 2e4
    with torch.no_grad():
        plain = ours(**inputs).sample
        with apply_smoothed_energy(ours, SmoothedEnergyGuidanceConfig(indices=[0], fqn=MID), sigma, 1e9):
            got = ours(**inputs).sample
        _apply_smoothed_energy_guidance_hook(ref, RefSEGConfig(indices=[0], fqn=MID), sigma, name="seg")
        expected = ref(**inputs).sample
        HookRegistry.check_if_exists_or_initialize(ref).remove_hook("seg", recurse=True)
    assert (got - plain).abs().max() > 1e-5
    assert_matches(got, expected, what="seg")
    seg = SmoothedEnergyGuidance(seg_guidance_start=0.0)
    seg.set_state(step=1, num_inference_steps=4, timestep=0)
    with torch.no_grad():
        perturbed = [g for g in seg.prepare_passes({"s": inputs["sample"]}) if g.perturbed]
        with seg.perturbation(ours, perturbed[0]):
            blurred = ours(**inputs).sample
        assert ours(**inputs).sample.equal(plain)
    assert (blurred - plain).abs().max() > 1e-5


@pytest.mark.parametrize("kind", ["layer-skip", "seg"])
def test_perturbation_acts_only_in_the_thread_that_installed_it(unets, kind) -> None:
    """One model, two threads: while one thread's pass is perturbed (swapped forwards, forward hooks), another
    thread's forward on the same model is the plain one; and the perturbed thread still gets its perturbation."""
    import threading

    from diffblocks.guiders import LayerSkipConfig

    ours, _, inputs = unets

    def install():
        if kind == "seg":
            return apply_smoothed_energy(ours, SmoothedEnergyGuidanceConfig(indices=[0], fqn=MID), 2e4, 1e9)
        return apply_layer_skip(ours, LayerSkipConfig(indices=[0, 1], fqn=MID, skip_attention=False,
                                                      skip_attention_scores=True, skip_ff=False))

    with torch.no_grad():
        plain = ours(**inputs).sample
        with install():
            perturbed = ours(**inputs).sample
    assert (perturbed - plain).abs().max() > 1e-5
    installed, other_done = threading.Event(), threading.Event()
    seen: dict = {}

    def perturbing() -> None:
        with torch.no_grad(), install():
            installed.set()
            assert other_done.wait(30)
            seen["perturbed"] = ours(**inputs).sample

    def plain_pass() -> None:
        assert installed.wait(30)
        with torch.no_grad():
            seen["plain"] = ours(**inputs).sample
        other_done.set()

    threads = [threading.Thread(target=perturbing), threading.Thread(target=plain_pass)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert torch.equal(seen["plain"], plain), "another thread's perturbation leaked into this forward"
    assert torch.equal(seen["perturbed"], perturbed)
    assert all("forward" not in m.__dict__ for m in ours.modules())
    assert all(not m._forward_hooks for m in ours.modules())
