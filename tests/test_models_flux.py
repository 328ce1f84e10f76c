"""FluxTransformer2DModel against the reference implementation on the same checkpoints."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from model_fixtures import assert_matches, save_reference

from diffblocks.components.modeling import CheckpointError
from diffblocks.components.models.flux_layers import apply_rotary_emb, rope_frequencies
from diffblocks.components.models.flux_transformer import FluxTransformer2DModel

logging.getLogger("diffusers").setLevel(logging.ERROR)

FLUX_TINY = {
    "patch_size": 1, "in_channels": 8, "num_layers": 2, "num_single_layers": 3, "attention_head_dim": 16,
    "num_attention_heads": 2, "joint_attention_dim": 24, "pooled_projection_dim": 20, "guidance_embeds": True,
    "axes_dims_rope": [4, 6, 6],
}
# FLUX.1-dev widths and RoPE axes, one block of each kind
FLUX_FULL_WIDTH = {
    "patch_size": 1, "in_channels": 64, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}


def flux_inputs(config: dict, batch: int = 2, height: int = 3, width: int = 5, text: int = 7,
                seed: int = 11) -> dict:
    """Packed-latent inputs with real (0, row, col) image ids and zero text ids, as the Flux pipelines build them."""
    gen = torch.Generator().manual_seed(seed)
    img_ids = torch.zeros(height * width, 3)
    img_ids[:, 1] = torch.arange(height).repeat_interleave(width)
    img_ids[:, 2] = torch.arange(width).repeat(height)
    inputs = {
        "hidden_states": torch.randn(batch, height * width, config["in_channels"], generator=gen),
        "encoder_hidden_states": torch.randn(batch, text, config["joint_attention_dim"], generator=gen),
        "pooled_projections": torch.randn(batch, config["pooled_projection_dim"], generator=gen),
        "timestep": torch.tensor([0.25, 0.9, 0.5, 0.1][:batch]),
        "img_ids": img_ids,
        "txt_ids": torch.zeros(text, 3),
    }
    if config.get("guidance_embeds"):
        inputs["guidance"] = torch.tensor([3.5, 2.0, 4.0, 1.0][:batch])
    return inputs


@pytest.fixture(scope="module", params=[True, False], ids=["dev-guidance", "schnell"])
def flux_pair(request, tmp_path_factory):
    config = {**FLUX_TINY, "guidance_embeds": request.param}
    path = tmp_path_factory.mktemp("flux") / "transformer"
    ref = save_reference("FluxTransformer2DModel", config, path, seed=3)
    return FluxTransformer2DModel.from_pretrained(path), ref, config, path


def test_forward_matches_reference(flux_pair) -> None:
    ours, ref, config, _ = flux_pair
    inputs = flux_inputs(config)
    with torch.no_grad():
        got = ours(**inputs)
        expected = ref(**inputs).sample
        as_tuple = ours(**inputs, return_dict=False)
    assert_matches(got.sample, expected, what=f"guidance_embeds={config['guidance_embeds']}")
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], got.sample)
    assert ours.config.guidance_embeds == config["guidance_embeds"]


def test_state_dict_layout_is_the_reference_layout(flux_pair) -> None:
    ours, ref, _, _ = flux_pair
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(ours_sd) == list(ref_sd)
    assert all(ours_sd[k].shape == ref_sd[k].shape for k in ref_sd)
    names = dict(ours.named_modules())
    for path in ("transformer_blocks.1.attn", "transformer_blocks.0.ff_context", "single_transformer_blocks.2.attn",
                 "time_text_embed.timestep_embedder", "norm_out"):
        assert path in names


def test_saved_checkpoint_loads_in_reference(flux_pair, tmp_path) -> None:
    import diffusers

    ours, _, config, _ = flux_pair
    ours.save_pretrained(tmp_path / "saved")
    back = diffusers.FluxTransformer2DModel.from_pretrained(str(tmp_path / "saved")).eval()
    inputs = flux_inputs(config, batch=1)
    with torch.no_grad():
        assert_matches(ours(**inputs).sample, back(**inputs).sample)


def test_attention_mask_controlnet_and_out_channels_match_reference(tmp_path) -> None:
    config = {**FLUX_TINY, "out_channels": 6, "guidance_embeds": False}
    ref = save_reference("FluxTransformer2DModel", config, tmp_path, seed=8)
    ours = FluxTransformer2DModel.from_pretrained(tmp_path)
    inputs = flux_inputs(config, batch=2)
    batch, tokens = inputs["hidden_states"].shape[:2]
    text = inputs["encoder_hidden_states"].shape[1]
    mask = torch.ones(batch, 1, 1, text + tokens, dtype=torch.bool)
    mask[0, ..., 4:text] = False  # padding text tokens of the first prompt
    gen = torch.Generator().manual_seed(2)
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    double = [torch.randn(batch, tokens, inner, generator=gen)]  # one sample spread over both double blocks
    single = [torch.randn(batch, tokens, inner, generator=gen) for _ in range(2)]
    kwargs = dict(joint_attention_kwargs={"attention_mask": mask}, controlnet_block_samples=double,
                  controlnet_single_block_samples=single)
    with torch.no_grad():
        got = ours(**inputs, **kwargs).sample
        expected = ref(**inputs, **kwargs).sample
        plain = ours(**inputs).sample
        repeat = ours(**inputs, controlnet_block_samples=single, controlnet_blocks_repeat=True).sample
        repeat_ref = ref(**inputs, controlnet_block_samples=single, controlnet_blocks_repeat=True).sample
    assert got.shape == (batch, tokens, 6)
    assert_matches(got, expected, what="mask + controlnet")
    assert_matches(repeat, repeat_ref, what="controlnet repeat")
    assert (got - plain).abs().max() > 1e-3


def test_three_dim_ids_and_scalar_timestep_are_accepted(flux_pair) -> None:
    ours, ref, config, _ = flux_pair
    inputs = flux_inputs(config, batch=1)
    with torch.no_grad():
        expected = ref(**inputs).sample
        legacy = dict(inputs, img_ids=inputs["img_ids"][None], txt_ids=inputs["txt_ids"][None],
                      timestep=float(inputs["timestep"][0]))
        if "guidance" in legacy:
            legacy["guidance"] = float(legacy["guidance"][0])
        assert_matches(ours(**legacy).sample, expected)


def test_gradients_match_reference_with_and_without_checkpointing(tmp_path) -> None:
    config = {**FLUX_TINY, "num_layers": 1, "num_single_layers": 1}
    ref = save_reference("FluxTransformer2DModel", config, tmp_path, seed=4)
    ours = FluxTransformer2DModel.from_pretrained(tmp_path)
    inputs = flux_inputs(config)

    def grads(model):
        model.zero_grad()
        model(**inputs).sample.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    expected = grads(ref)
    plain = grads(ours)
    ours.enable_gradient_checkpointing()
    assert ours.is_gradient_checkpointing
    checkpointed = grads(ours)
    for name, g in expected.items():
        assert_matches(plain[name], g, rel=1e-4, what=name)
        assert_matches(checkpointed[name], plain[name], rel=1e-6, what=f"{name} (checkpointed)")


def test_rotary_embedding_matches_reference_functions() -> None:
    from diffusers.models.embeddings import apply_rotary_emb as ref_apply
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed as RefPosEmbed

    ids = torch.stack([torch.zeros(40), torch.arange(40.0) // 8 + 60, torch.arange(40.0) % 8 + 100], dim=-1)
    axes = (16, 56, 56)
    freqs = rope_frequencies(ids, axes)
    cos, sin = RefPosEmbed(theta=10000, axes_dim=list(axes))(ids)
    assert freqs.shape == (40, 1, 64, 2) and freqs.dtype == torch.float32
    torch.testing.assert_close(freqs[:, 0, :, 0].repeat_interleave(2, dim=-1), cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(freqs[:, 0, :, 1].repeat_interleave(2, dim=-1), sin, rtol=0, atol=1e-6)
    x = torch.randn(2, 40, 3, 128)
    torch.testing.assert_close(apply_rotary_emb(x, freqs), ref_apply(x, (cos, sin), sequence_dim=1),
                               rtol=1e-5, atol=1e-6)
    xb = x.to(torch.bfloat16)
    assert apply_rotary_emb(xb, freqs).dtype == torch.bfloat16


def test_bad_inputs_name_what_is_wrong(flux_pair) -> None:
    ours, _, config, _ = flux_pair
    inputs = flux_inputs(config, batch=1)
    if config["guidance_embeds"]:
        with pytest.raises(ValueError, match="guidance_embeds=True.*pass guidance"):
            ours(**dict(inputs, guidance=None))
    else:
        with pytest.raises(ValueError, match="guidance_embeds=False.*pass guidance=None"):
            ours(**inputs, guidance=torch.tensor([3.5]))
    with pytest.raises(ValueError, match=r"img_ids must have shape \(15, 3\).*got \(14, 3\)"):
        ours(**dict(inputs, img_ids=inputs["img_ids"][:14]))
    with pytest.raises(ValueError, match=r"hidden_states must be packed latents \(batch, tokens, 8\)"):
        ours(**dict(inputs, hidden_states=inputs["hidden_states"][..., :4]))
    with pytest.raises(ValueError, match=r"missing required inputs \['pooled_projections'\]"):
        ours(**dict(inputs, pooled_projections=None))
    with pytest.raises(ValueError, match="axes_dims_rope .* sum to attention_head_dim"):
        FluxTransformer2DModel(**{**FLUX_TINY, "axes_dims_rope": [4, 4, 4]})


def test_checkpoint_of_other_config_is_rejected(flux_pair) -> None:
    _, _, config, path = flux_pair
    with pytest.raises(CheckpointError, match="missing keys"):
        FluxTransformer2DModel.from_pretrained(path, num_single_layers=4)


@pytest.mark.slow
def test_full_width_one_block_each_matches_reference() -> None:
    """FLUX.1-dev widths (3072 hidden, 24 heads, RoPE axes 16/56/56), one double and one single block."""
    import diffusers

    torch.manual_seed(0)
    with torch.device("meta"):
        ref = diffusers.FluxTransformer2DModel(**copy.deepcopy(FLUX_FULL_WIDTH))
        ours = FluxTransformer2DModel.from_config(FLUX_FULL_WIDTH)
    # ~0.5B weights: views into one random pool at scattered offsets (drawing them all would take most of the test)
    gen = torch.Generator().manual_seed(1)
    pool = torch.randn(60_000_000, generator=gen) / FLUX_FULL_WIDTH["num_attention_heads"] ** 0.5 / 11
    weights = {}
    for i, (name, p) in enumerate(ref.state_dict().items()):
        n = p.numel()
        start = (i * 7_919_993) % (pool.numel() - n)
        w = pool[start:start + n].view(p.shape)
        weights[name] = w * 5 + 1 if name.endswith(("norm_q.weight", "norm_k.weight")) else w
    ref.load_state_dict(weights, assign=True)
    ours.load_state_dict(weights, assign=True)  # the same storage: no second copy
    inputs = flux_inputs(FLUX_FULL_WIDTH, batch=1, height=2, width=3, text=4)
    inputs["img_ids"][:, 1:] += 40  # positions far from the origin exercise the high RoPE frequencies
    with torch.no_grad():
        expected = ref.eval()(**inputs).sample
        got = ours.eval()(**inputs).sample
    assert_matches(got, expected, what="full-width Flux")


def test_compiled_code_path_matches_reference(flux_pair, monkeypatch) -> None:
    """The formulations used under torch.compile (real-valued RoPE, concatenated proj_out), run eagerly."""
    ours, ref, config, _ = flux_pair
    inputs = flux_inputs(config)
    with torch.no_grad():
        expected = ref(**inputs).sample
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        got = ours(**inputs).sample
    assert_matches(got, expected, what="compile-path formulation")


def test_lora_scale_in_joint_attention_kwargs_matches_reference(tmp_path) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    config = {**FLUX_TINY, "guidance_embeds": False}
    ref = save_reference("FluxTransformer2DModel", config, tmp_path, seed=6)
    ours = FluxTransformer2DModel.from_pretrained(tmp_path)
    lora = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v", "proj_out", "ff.net.2"])
    for model in (ours, ref):
        inject_adapter_in_model(copy.deepcopy(lora), model)
    gen = torch.Generator().manual_seed(9)
    lora_weights = {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in ref.state_dict().items() if "lora_" in k}
    assert lora_weights and set(lora_weights) <= set(ours.state_dict())
    ref.load_state_dict(lora_weights, strict=False)
    ours.load_state_dict(lora_weights, strict=False)
    inputs = flux_inputs(config)
    with torch.no_grad():
        plain = ours(**inputs).sample
        got = ours(**inputs, joint_attention_kwargs={"scale": 0.3}).sample
        expected = ref(**inputs, joint_attention_kwargs={"scale": 0.3}).sample
        after = ours(**inputs).sample
    assert_matches(got, expected, what="LoRA scale 0.3")
    assert (got - plain).abs().max() > 1e-3
    assert torch.equal(after, plain)  # the scale applies to one call only
