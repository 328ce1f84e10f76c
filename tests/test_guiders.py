"""Guider parity with the reference (diffusers) guiders: plans, inputs and combination math over steps."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from diffusers import guiders as ref_guiders

from diffblocks import guiders as ours
from diffblocks.guiders import LayerSkipConfig
from diffblocks.guiders.cfg import image_from_pyramid, laplacian_pyramid

logging.getLogger("diffusers").setLevel(logging.ERROR)

N_STEPS = 10
SHAPE = (2, 4, 8, 8)

# (class name, kwargs) -- kwargs valid for both implementations
CASES = [
    ("ClassifierFreeGuidance", {}),
    ("ClassifierFreeGuidance", {"guidance_scale": 5.0, "guidance_rescale": 0.7, "start": 0.2, "stop": 0.8}),
    ("ClassifierFreeGuidance", {"guidance_scale": 3.0, "use_original_formulation": True}),
    ("ClassifierFreeGuidance", {"guidance_scale": 1.0}),
    ("AdaptiveProjectedGuidance", {}),
    ("AdaptiveProjectedGuidance", {"adaptive_projected_guidance_momentum": -0.5, "eta": 0.3,
                                   "adaptive_projected_guidance_rescale": 2.0, "start": 0.1}),
    ("AdaptiveProjectedGuidance", {"adaptive_projected_guidance_momentum": 0.7, "adaptive_projected_guidance_norm_dim": 1,
                                   "guidance_rescale": 0.5, "use_original_formulation": True}),
    ("AdaptiveProjectedGuidance", {"adaptive_projected_guidance_momentum": 0.3,
                                   "adaptive_projected_guidance_norm_dim": [2, 3], "stop": 0.6}),
    ("TangentialClassifierFreeGuidance", {}),
    ("TangentialClassifierFreeGuidance", {"guidance_scale": 4.0, "guidance_rescale": 0.3, "start": 0.3}),
    ("TangentialClassifierFreeGuidance", {"use_original_formulation": True}),
    ("ClassifierFreeZeroStarGuidance", {}),
    ("ClassifierFreeZeroStarGuidance", {"zero_init_steps": 3, "use_original_formulation": True, "stop": 0.9}),
    ("ClassifierFreeZeroStarGuidance", {"zero_init_steps": 0, "guidance_rescale": 0.4}),
    ("PerturbedAttentionGuidance", {"perturbed_guidance_layers": [0]}),
    ("PerturbedAttentionGuidance", {"perturbed_guidance_layers": [0, 1], "perturbed_guidance_scale": 1.5,
                                    "perturbed_guidance_start": 0.0, "perturbed_guidance_stop": 0.7,
                                    "guidance_rescale": 0.6, "start": 0.1, "stop": 0.5}),
    ("SkipLayerGuidance", {"skip_layer_guidance_layers": [1]}),
    ("SkipLayerGuidance", {"skip_layer_guidance_layers": 2, "skip_layer_guidance_scale": 4.0,
                           "skip_layer_guidance_start": 0.1, "skip_layer_guidance_stop": 0.9,
                           "use_original_formulation": True, "guidance_scale": 2.0}),
    ("SmoothedEnergyGuidance", {"seg_guidance_layers": [0]}),
    ("SmoothedEnergyGuidance", {"seg_guidance_layers": [0], "seg_guidance_start": 0.2, "seg_guidance_stop": 0.6,
                                "guidance_rescale": 0.2}),
    ("AutoGuidance", {"auto_guidance_layers": [0], "dropout": 1.0}),
    ("AutoGuidance", {"auto_guidance_layers": [0, 1], "dropout": 1.0, "guidance_scale": 3.0, "start": 0.3}),
    ("FrequencyDecoupledGuidance", {}),
    ("FrequencyDecoupledGuidance", {"guidance_scales": [8.0, 4.0, 2.0], "parallel_weights": 0.5,
                                    "guidance_rescale": 0.3, "start": 0.1, "stop": 0.9}),
    ("FrequencyDecoupledGuidance", {"guidance_scales": [6.0, 3.0], "guidance_rescale": [0.5, 0.2],
                                    "guidance_rescale_space": "freq", "use_original_formulation": True,
                                    "parallel_weights": [0.2, 0.8]}),
]


def _ref(name: str, kwargs: dict):
    if name == "FrequencyDecoupledGuidance":
        pytest.importorskip("kornia", reason="the reference FDG needs kornia (pip install kornia)")
    return getattr(ref_guiders, name)(**kwargs)


@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_guider_parity_over_steps(name: str, kwargs: dict) -> None:
    ref = _ref(name, kwargs)
    mine = getattr(ours, name)(**kwargs)
    fast = getattr(ours, name)(**kwargs)  # the batched fast path, run alongside (forward is stateful for APG)
    gen = torch.Generator().manual_seed(0)
    cond_in, uncond_in = torch.randn(1, 3, generator=gen), torch.randn(1, 3, generator=gen)
    shared = torch.randn(1, 2, generator=gen)
    seen = set()
    for step in range(N_STEPS):
        t = torch.tensor(999 - 100 * step)
        ref.set_state(step=step, num_inference_steps=N_STEPS, timestep=t)
        mine.set_state(step=step, num_inference_steps=N_STEPS, timestep=t)
        fast.set_state(step=step, num_inference_steps=N_STEPS, timestep=t)
        assert mine.num_conditions == ref.num_conditions, f"step {step}"
        data = {"emb": (cond_in, uncond_in), "shared": shared}
        ref_batches, my_batches = ref.prepare_inputs(dict(data)), mine.prepare_inputs(dict(data))
        ids = [b.__guidance_identifier__ for b in ref_batches]
        assert [b.__guidance_identifier__ for b in my_batches] == ids
        seen.add(tuple(ids))
        for r, m in zip(ref_batches, my_batches):
            assert m.shared is shared
            if r.__guidance_identifier__ in ("pred_cond", "pred_uncond") and len(ids) != 2 or ids == [
                    "pred_cond", "pred_uncond"]:
                assert torch.equal(m.emb, r.emb)
        preds = {i: torch.randn(SHAPE, generator=gen) * (1 + k) for k, i in enumerate(ids)}
        for r, m in zip(ref_batches, my_batches):
            r.noise_pred = preds[r.__guidance_identifier__]
            m.noise_pred = preds[m.__guidance_identifier__]
        expected = ref(ref_batches)
        got = mine(my_batches)
        torch.testing.assert_close(got.pred, expected.pred, rtol=0, atol=1e-6)
        torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-6)
        assert got.pred_cond is preds["pred_cond"]
        # the batched fast path: same passes, same result
        groups = fast.prepare_passes({"emb": (cond_in, uncond_in)})
        assert sorted(i for grp in groups for i in grp.identifiers) == sorted(ids)
        combined = fast.combine({i: preds[i] for i in ids})
        torch.testing.assert_close(combined.pred, expected.pred, rtol=0, atol=1e-6)
    if kwargs.get("guidance_scale", 7.5) != 1.0:
        assert len(seen) > 1 or name in ("ClassifierFreeGuidance", "TangentialClassifierFreeGuidance",
                                          "ClassifierFreeZeroStarGuidance", "AdaptiveProjectedGuidance",
                                          "FrequencyDecoupledGuidance", "AutoGuidance")


def test_apg_momentum_state_carries_and_resets() -> None:
    kwargs = {"adaptive_projected_guidance_momentum": 0.5}
    ref, mine = ref_guiders.AdaptiveProjectedGuidance(**kwargs), ours.AdaptiveProjectedGuidance(**kwargs)
    gen = torch.Generator().manual_seed(3)
    for _run in range(2):  # a second denoising run must restart the momentum at step 0
        for step in range(4):
            for g in (ref, mine):
                g.set_state(step=step, num_inference_steps=4, timestep=step)
            rb, mb = ref.prepare_inputs({}), mine.prepare_inputs({})
            c, u = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
            for batches in (rb, mb):
                batches[0].noise_pred, batches[1].noise_pred = c, u
            torch.testing.assert_close(mine(mb).pred, ref(rb).pred, rtol=0, atol=1e-6)
            torch.testing.assert_close(mine.momentum_buffer.running_average, ref.momentum_buffer.running_average)


def test_cfg_zero_star_zero_init_with_rescale_is_zero() -> None:
    g = ours.ClassifierFreeZeroStarGuidance(guidance_rescale=0.5)
    g.set_state(step=0, num_inference_steps=5, timestep=0)
    out = g.combine({"pred_cond": torch.randn(SHAPE), "pred_uncond": torch.randn(SHAPE)})
    assert torch.equal(out.pred, torch.zeros(SHAPE))  # the reference divides 0 by 0 here


def test_guidance_scale_at_most_one_is_a_single_pass() -> None:
    for scale in (1.0, 0.5):
        g = ours.ClassifierFreeGuidance(guidance_scale=scale)
        g.set_state(step=0, num_inference_steps=4, timestep=0)
        assert g.num_conditions == 1 and not g.requires_unconditional
    pag = ours.PerturbedAttentionGuidance(guidance_scale=1.0, perturbed_guidance_start=0.0,
                                           perturbed_guidance_stop=1.0)
    pag.set_state(step=2, num_inference_steps=4, timestep=0)
    assert [p.identifier for p in pag._passes()] == ["pred_cond", "pred_cond_skip"]
    # the perturbed pass uses the conditional inputs (the reference feeds the unconditional ones here)
    batches = pag.prepare_inputs({"emb": (torch.ones(1), torch.zeros(1))})
    assert all(torch.equal(b.emb, torch.ones(1)) for b in batches)
    assert not pag.requires_unconditional


def test_prepare_passes_batches_uncond_then_cond() -> None:
    g = ours.PerturbedAttentionGuidance(perturbed_guidance_start=0.0, perturbed_guidance_stop=1.0)
    g.set_state(step=3, num_inference_steps=10, timestep=0)
    pe, npe = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    latents = torch.randn(2, 4, 8, 8)
    groups = g.prepare_passes({"latents": latents, "prompt_embeds": (pe, npe), "extra": {"t": (pe[:, 0], npe[:, 0])},
                               "none": (None, None)})
    assert [grp.identifiers for grp in groups] == [["pred_uncond", "pred_cond"], ["pred_cond_skip"]]
    assert [grp.perturbed for grp in groups] == [False, True]
    first, second = groups
    assert torch.equal(first.prompt_embeds, torch.cat([npe, pe])) and torch.equal(first.latents, torch.cat([latents] * 2))
    assert torch.equal(first.extra["t"], torch.cat([npe[:, 0], pe[:, 0]])) and first.none is None
    assert torch.equal(second.prompt_embeds, pe) and second.latents is latents
    out = torch.randn(4, 4, 8, 8)
    split = first.split(out)
    assert torch.equal(split["pred_uncond"], out[:2]) and torch.equal(split["pred_cond"], out[2:])
    unbatched = g.prepare_passes({"latents": latents, "prompt_embeds": (pe, npe)}, batched=False)
    assert [grp.identifiers for grp in unbatched] == [["pred_uncond"], ["pred_cond"], ["pred_cond_skip"]]
    with pytest.raises(ValueError, match="expected predictions"):
        g.combine({"pred_cond": out[:2]})


def test_with_overrides_does_not_mutate() -> None:
    g = ours.ClassifierFreeGuidance(guidance_scale=7.5)
    h = g.with_overrides(guidance_scale=3.0, guidance_rescale=0.2)
    assert g.guidance_scale == 7.5 and g.config.guidance_scale == 7.5
    assert h.guidance_scale == 3.0 and h.config.guidance_rescale == 0.2 and type(h) is type(g)
    assert g.with_overrides() is g and g.with_overrides(guidance_scale=7.5) is g
    with pytest.raises(ValueError, match="no option 'scale'"):
        g.with_overrides(scale=2.0)
    with pytest.raises(TypeError, match="must be a scalar"):
        ours.PerturbedAttentionGuidance().with_overrides(perturbed_guidance_layers=[1, 2])


def test_enable_disable_and_errors() -> None:
    g = ours.ClassifierFreeGuidance()
    g.disable()
    assert g.num_conditions == 1
    g.enable()
    assert g.num_conditions == 2
    with pytest.raises(ValueError, match="start must be in"):
        ours.ClassifierFreeGuidance(start=1.0)
    with pytest.raises(ValueError, match="either"):
        ours.SkipLayerGuidance(skip_layer_guidance_layers=[1], skip_layer_config=LayerSkipConfig([1]))
    with pytest.raises(ValueError, match="expected 2 batches"):
        g([])
    with pytest.raises(ValueError, match="has 3 entries"):
        ours.FrequencyDecoupledGuidance(guidance_scales=[2.0, 3.0], parallel_weights=[1.0, 1.0, 1.0])


@pytest.mark.parametrize("name,kwargs", [
    ("ClassifierFreeGuidance", {"guidance_scale": 4.0, "guidance_rescale": 0.3}),
    ("PerturbedAttentionGuidance", {"perturbed_guidance_config": LayerSkipConfig(
        indices=[2, 9], fqn="mid_block.attentions.0.transformer_blocks", skip_attention=False,
        skip_attention_scores=True, skip_ff=False)}),
    ("SkipLayerGuidance", {"skip_layer_config": [LayerSkipConfig([1], fqn="transformer_blocks", skip_ff=False)]}),
    ("AdaptiveProjectedGuidance", {"adaptive_projected_guidance_momentum": -0.5}),
    ("FrequencyDecoupledGuidance", {"guidance_scales": [4.0, 2.0, 1.5]}),
])
def test_config_round_trip_and_reference_interop(tmp_path, name: str, kwargs: dict) -> None:
    g = getattr(ours, name)(**kwargs)
    g.save_pretrained(tmp_path / "repo" / "guider")
    assert (tmp_path / "repo" / "guider" / "guider_config.json").is_file()
    loaded = getattr(ours, name).from_pretrained(tmp_path / "repo", subfolder="guider")
    assert loaded.to_json_string() == g.to_json_string()
    if name != "FrequencyDecoupledGuidance" or pytest.importorskip("kornia"):
        # the reference reads our file and we read the reference's
        ref = getattr(ref_guiders, name).from_pretrained(tmp_path / "repo", subfolder="guider")
        ref.save_pretrained(tmp_path / "ref")
        back = getattr(ours, name).from_pretrained(tmp_path / "ref")
        assert back.to_json_string() == g.to_json_string()
        saved = json.loads((tmp_path / "ref" / "guider_config.json").read_text())
        assert saved["_class_name"] == name


def test_laplacian_pyramid_reconstructs_and_matches_kornia() -> None:
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    pyr = laplacian_pyramid(x, 3)
    assert [tuple(p.shape[-2:]) for p in pyr] == [(16, 16), (8, 8), (4, 4)]
    torch.testing.assert_close(image_from_pyramid(pyr), x)  # exact inverse by construction
    kornia = pytest.importorskip("kornia")
    for shape, levels in (((2, 3, 16, 16), 3), ((1, 4, 12, 20), 2), ((1, 2, 8, 24), 3)):
        y = torch.randn(shape)
        for a, b in zip(laplacian_pyramid(y, levels), kornia.geometry.transform.build_laplacian_pyramid(y, levels)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_fdg_non_power_of_two_keeps_shape() -> None:
    kornia = pytest.importorskip("kornia")
    g = ours.FrequencyDecoupledGuidance(guidance_scales=[5.0, 2.0])
    ref = ref_guiders.FrequencyDecoupledGuidance(guidance_scales=[5.0, 2.0])
    c, u = torch.randn(1, 4, 12, 20), torch.randn(1, 4, 12, 20)
    out = g.combine({"pred_cond": c, "pred_uncond": u}).pred
    assert out.shape == c.shape
    assert kornia is not None
    # the reference returns the padded size; its top-left crop is ours
    expected = ref.forward(c, u).pred[..., :12, :20]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
