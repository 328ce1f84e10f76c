"""Flux presets against the reference FluxPipeline / FluxImg2ImgPipeline / FluxInpaintPipeline.

Both run on the same tiny standard folder (fixtures_flux.build_flux) with the same seed and kwargs, in fp32;
images (output_type="np") must agree within 1e-3.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from fixtures_flux import FLUX_TRANSFORMER, MAX_SEQUENCE_LENGTH, build_flux, flux_image

from diffblocks import BlockInputError, ModularPipeline, SequentialPipelineBlocks
from diffblocks.components.models.flux_transformer import FluxTransformer2DModel
from diffblocks.presets import blocks_for_standard_pipeline
from diffblocks.presets.flux import (
    IMAGE2IMAGE_BLOCKS,
    INPAINT_BLOCKS,
    TEXT2IMAGE_BLOCKS,
    FluxAutoBlocks,
)

logging.getLogger("diffusers").setLevel(logging.ERROR)

ATOL = 1e-3
SIZE = 32
COMMON = {"height": SIZE, "width": SIZE, "num_inference_steps": 3, "max_sequence_length": MAX_SEQUENCE_LENGTH,
          "output_type": "np"}


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return build_flux(tmp_path_factory.mktemp("flux-presets"))


@pytest.fixture(scope="module")
def pipe(flux_dir) -> ModularPipeline:
    pipe = ModularPipeline.from_pretrained(flux_dir)
    pipe.load_components(torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def reference(flux_dir) -> dict:
    import diffusers

    t2i = diffusers.FluxPipeline.from_pretrained(flux_dir, torch_dtype=torch.float32)
    refs = {"t2i": t2i, "i2i": diffusers.FluxImg2ImgPipeline(**t2i.components),
            "inpaint": diffusers.FluxInpaintPipeline(**t2i.components)}
    for ref in refs.values():
        ref.set_progress_bar_config(disable=True)
    return refs


def _seeded(kwargs: dict, seed: int = 0) -> dict:
    kwargs = dict(COMMON, **kwargs)
    gens = kwargs.pop("generators", None)
    kwargs["generator"] = ([torch.Generator().manual_seed(seed + i) for i in range(gens)] if gens
                           else torch.Generator().manual_seed(seed))
    return kwargs


def _compare(ref, ours: ModularPipeline, **kwargs) -> np.ndarray:
    expected = ref(**_seeded(kwargs)).images
    got = ours(**_seeded(kwargs), output="images")
    assert got.shape == expected.shape
    assert expected.std() > 0.05, "reference images are flat; the comparison would detect little"
    err = np.abs(got - expected).max()
    assert err <= ATOL, f"max abs difference {err:.2e} > {ATOL}"
    return got


def _flat_pipeline(blocks_dict, pipe: ModularPipeline) -> ModularPipeline:
    flat = SequentialPipelineBlocks.from_blocks_dict(blocks_dict).init_pipeline()
    flat.update_components(**{k: v for k, v in pipe.components.items() if k in flat.component_names})
    flat.set_progress_bar_config(disable=True)
    return flat


# -- parity ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [
    {"prompt": ["a cat", "dog!"], "num_images_per_prompt": 2},
    {"prompt": "a red fox", "prompt_2": "in the snow", "guidance_scale": 5.0, "generators": 2,
     "num_images_per_prompt": 2},
], ids=["2prompts-x2", "prompt_2-generators"])
def test_text2image_matches_reference(pipe, reference, case) -> None:
    _compare(reference["t2i"], pipe, **case)


def test_precomputed_embeddings_match_reference(pipe, reference) -> None:
    embeds = pipe(**_seeded({"prompt": ["a cat", "dog!"]}), output=["prompt_embeds", "pooled_prompt_embeds"])
    ref_embeds, ref_pooled, _ = reference["t2i"].encode_prompt(["a cat", "dog!"], None,
                                                               max_sequence_length=MAX_SEQUENCE_LENGTH)
    torch.testing.assert_close(embeds["prompt_embeds"], ref_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(embeds["pooled_prompt_embeds"], ref_pooled, atol=1e-5, rtol=0)
    _compare(reference["t2i"], pipe, sigmas=[1.0, 0.7, 0.4, 0.2], **embeds)


def test_text2image_flat_preset_matches_reference(pipe, reference) -> None:
    _compare(reference["t2i"], _flat_pipeline(TEXT2IMAGE_BLOCKS, pipe), prompt="a cat", num_images_per_prompt=2)


@pytest.mark.parametrize("case", [
    # default guidance_scale (7.0 for image-to-image, as FluxImg2ImgPipeline)
    {"prompt": ["a cat", "dog!"], "num_images_per_prompt": 2, "strength": 0.7},
    {"prompt": ["a cat", "dog!"], "image": [flux_image(SIZE, 0), flux_image(SIZE, 1)], "strength": 0.5,
     "generators": 2, "guidance_scale": 3.5},
], ids=["2prompts-x2", "2images-generators"])
def test_image2image_matches_reference(pipe, reference, case) -> None:
    case = {"image": flux_image(SIZE, 0), **case}
    _compare(reference["i2i"], pipe, **case)


def test_image2image_flat_preset_matches_reference(pipe, reference) -> None:
    _compare(reference["i2i"], _flat_pipeline(IMAGE2IMAGE_BLOCKS, pipe), prompt="a cat", image=flux_image(SIZE, 2),
             strength=0.8)


def test_inpaint_matches_reference(pipe, reference) -> None:
    image, mask = flux_image(SIZE, 3), flux_image(SIZE, mode="L")
    got = _compare(reference["inpaint"], pipe, prompt=["a cat", "dog!"], num_images_per_prompt=2, image=image,
                   mask_image=mask, strength=0.8)
    # the same call without the mask is image-to-image, which changes the unmasked area too
    i2i = pipe(**_seeded({"prompt": ["a cat", "dog!"], "num_images_per_prompt": 2, "image": image,
                          "strength": 0.8}), output="images")
    assert np.abs(got - i2i).max() > 0.05


def test_inpaint_flat_preset_matches_reference(pipe, reference) -> None:
    _compare(reference["inpaint"], _flat_pipeline(INPAINT_BLOCKS, pipe), prompt="a cat", image=flux_image(SIZE, 4),
             mask_image=flux_image(SIZE, mode="L"), guidance_scale=3.0)


def test_true_cfg_matches_reference_with_batched_passes(pipe, reference) -> None:
    calls: list[int] = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)
    try:
        got = _compare(reference["t2i"], pipe, prompt=["a cat", "dog!"], negative_prompt=["ugly", "blurry"],
                       true_cfg_scale=3.0, num_images_per_prompt=2)
    finally:
        handle.remove()
    # one transformer call per step with the conditional and unconditional passes batched together
    assert calls == [8] * COMMON["num_inference_steps"]
    assert pipe.guider.guidance_scale == 1.0, "the per-call scale must not change the guider component"
    plain = pipe(**_seeded({"prompt": ["a cat", "dog!"], "num_images_per_prompt": 2}), output="images")
    assert np.abs(got - plain).max() > 0.05


def test_true_cfg_image2image_single_negative_matches_reference(pipe, reference) -> None:
    _compare(reference["i2i"], pipe, prompt=["a cat", "dog!"], negative_prompt="ugly", true_cfg_scale=2.0,
             image=flux_image(SIZE, 5), strength=0.9)


def test_true_cfg_without_negative_prompt_is_off(pipe, reference) -> None:
    kwargs = {"prompt": "a cat", "true_cfg_scale": 4.0}
    got = _compare(reference["t2i"], pipe, **kwargs)
    plain = pipe(**_seeded({"prompt": "a cat"}), output="images")
    np.testing.assert_array_equal(got, plain)


def test_schnell_transformer_without_guidance_embedding(pipe, reference, tmp_path) -> None:
    import diffusers
    from model_fixtures import perturb_

    config = {**FLUX_TRANSFORMER, "guidance_embeds": False}
    torch.manual_seed(51)
    perturb_(diffusers.FluxTransformer2DModel(**config), 52).eval().save_pretrained(tmp_path / "transformer")
    ref = diffusers.FluxPipeline(**{**reference["t2i"].components,
                                    "transformer": diffusers.FluxTransformer2DModel.from_pretrained(
                                        tmp_path / "transformer")})
    ref.set_progress_bar_config(disable=True)
    ours = _flat_pipeline(TEXT2IMAGE_BLOCKS, pipe)
    ours.update_components(transformer=FluxTransformer2DModel.from_pretrained(tmp_path / "transformer"))
    _compare(ref, ours, prompt=["a cat", "dog!"], guidance_scale=0.0)


# -- loading and structure -----------------------------------------------------------------------------------------
def test_from_pretrained_standard_folder(pipe, flux_dir) -> None:
    assert isinstance(pipe.blocks, FluxAutoBlocks)
    assert isinstance(pipe.transformer, FluxTransformer2DModel)  # ours, not the reference's
    assert type(pipe.vae).__module__.startswith("diffblocks.")
    assert type(pipe.scheduler).__module__.startswith("diffblocks.")
    assert pipe.get_component_spec("transformer").subfolder == "transformer"
    for name in ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"):
        assert isinstance(blocks_for_standard_pipeline(name, {}), FluxAutoBlocks)


def test_workflows_select_the_right_steps() -> None:
    blocks = FluxAutoBlocks()
    assert blocks.available_workflows == ["text2image", "image2image", "inpainting"]

    def classes(workflow: str) -> list[str]:
        return [type(b).__name__ for b in blocks.get_workflow(workflow).sub_blocks.values()]

    assert classes("text2image") == [
        "FluxTextEncoderStep", "FluxTextInputStep", "FluxPrepareLatentsStep", "FluxSetTimestepsStep",
        "FluxRoPEInputsStep", "FluxDenoiseStep", "FluxDecodeStep"]
    assert classes("image2image") == [
        "FluxTextEncoderStep", "FluxImageVaeEncoderStep", "FluxSampleImageLatentsStep", "FluxTextInputStep",
        "FluxImg2ImgSetTimestepsStep", "FluxImg2ImgPrepareLatentsStep", "FluxRoPEInputsStep", "FluxImg2ImgDenoiseStep", "FluxDecodeStep"]
    assert classes("inpainting") == [
        "FluxTextEncoderStep", "FluxInpaintImageVaeEncoderStep", "FluxSampleImageLatentsStep", "FluxTextInputStep",
        "FluxImg2ImgSetTimestepsStep", "FluxInpaintPrepareLatentsStep", "FluxRoPEInputsStep", "FluxInpaintDenoiseStep", "FluxDecodeStep"]
    for flat in (TEXT2IMAGE_BLOCKS, IMAGE2IMAGE_BLOCKS, INPAINT_BLOCKS):
        assert not SequentialPipelineBlocks.from_blocks_dict(flat).validate()
    assert "true_cfg_scale" in blocks.input_names and "guidance_scale" in blocks.input_names


# -- bad inputs -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, block, name", [
    ({"height": 30}, "FluxPrepareLatentsStep", "height"),
    ({"max_sequence_length": 600}, "FluxTextEncoderStep", "max_sequence_length"),
    ({"image": "pixels"}, "vae_encoder", "image"),
    ({"image": flux_image(SIZE), "strength": 1.5}, "FluxImg2ImgSetTimestepsStep", "strength"),
    ({"generator": [torch.Generator()] * 3}, "FluxPrepareLatentsStep", "generator"),
    ({"prompt": ["a", "b"], "prompt_2": ["c"]}, "FluxTextEncoderStep", "prompt_2"),
], ids=["height", "max_sequence_length", "image-type", "strength", "generators", "prompt_2-count"])
def test_bad_inputs_raise_block_input_error(pipe, kwargs, block, name) -> None:
    call = {**COMMON, "prompt": "a cat", **kwargs}
    with pytest.raises(BlockInputError) as info:
        pipe(**call)
    assert info.value.input_name == name
    assert block in str(info.value) and repr(name) in str(info.value)


def test_bad_input_types_are_rejected_before_running(pipe) -> None:
    with pytest.raises(BlockInputError, match="prompt"):
        pipe(prompt=123, **COMMON)
    with pytest.raises(BlockInputError, match="true_cfg"):
        pipe(prompt="a", true_cfg_scal=2.0)
    with pytest.raises(BlockInputError) as info:  # a mask needs the image it applies to
        pipe(prompt="a", mask_image=flux_image(SIZE, mode="L"), **COMMON)
    assert info.value.input_name == "image"


@pytest.mark.parametrize("masked", [False, True], ids=["image2image", "inpaint"])
def test_new_seed_reuses_the_cached_vae_encode_and_matches_the_reference(flux_dir, pipe, reference, masked):
    """The Flux VAE encode is split like SD's: `encode` (posterior) comes from the block cache when only the seed
    changes, `sample` draws with the new seed; the result still matches the reference pipeline for that seed."""
    cached = ModularPipeline.from_pretrained(flux_dir)
    cached.load_components(torch_dtype=torch.float32)
    cached.set_progress_bar_config(disable=True)
    cached.enable_block_cache()
    hits: list[str] = []
    cached.add_progress_handler(lambda e: hits.append(e.path) if e.kind == "block_end" and e.cached else None)
    encodes = [0]
    cached.vae.encoder.register_forward_hook(lambda *_: encodes.__setitem__(0, encodes[0] + 1))
    kwargs = {"prompt": "a cat", "image": flux_image(SIZE, 5), "strength": 0.8}
    if masked:
        kwargs["mask_image"] = flux_image(SIZE, mode="L")
    cached(**_seeded(kwargs, seed=0), output="images")
    hits.clear()
    got = cached(**_seeded(kwargs, seed=1), output="images")
    assert encodes[0] == 1 and any(p.endswith(".encode") for p in hits)
    expected = reference["inpaint" if masked else "i2i"](**_seeded(kwargs, seed=1)).images
    assert np.abs(got - expected).max() <= ATOL
    assert np.array_equal(got, pipe(**_seeded(kwargs, seed=1), output="images"))  # = the uncached call
