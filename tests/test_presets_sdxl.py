"""SDXL presets: same images as the reference (diffusers) SDXL pipelines on a tiny folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_sd import build_sdxl, build_sdxl_controlnet, test_image

from diffblocks import BlockInputError, ControlNetModel, ModularPipeline

diffusers = pytest.importorskip("diffusers")

TOL = 1e-3
STEPS = 3
PROMPTS = ["a red cat", "a blue dog"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl-folders")
    return {"sdxl": build_sdxl(root), "controlnet": build_sdxl_controlnet(root)}


@pytest.fixture(scope="module")
def xl(folders):
    pipe = ModularPipeline.from_pretrained(str(folders["sdxl"]))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ref(cls, folders, **kw):
    pipe = cls.from_pretrained(str(folders["sdxl"]), **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ref(folders):
    return _ref(diffusers.StableDiffusionXLPipeline, folders)


def _compare(ref, ours, output_type="np", **kwargs):
    expected = ref(**kwargs, generator=torch.Generator().manual_seed(0), output_type=output_type).images
    got = ours(**kwargs, generator=torch.Generator().manual_seed(0), output_type=output_type, output="images")
    assert got.shape == expected.shape
    assert float(expected.std()) > 0.05
    err = float(np.abs(np.asarray(got) - np.asarray(expected)).max())
    assert err <= TOL, f"max abs difference {err:.2e} > {TOL}"
    return got


@pytest.mark.parametrize("kwargs", [
    {"prompt": PROMPTS, "negative_prompt": ["ugly", "bad"], "num_images_per_prompt": 2},
    {"prompt": "a red cat", "prompt_2": "oil painting", "guidance_rescale": 0.5},
    {"prompt": PROMPTS, "guidance_scale": 1.0},
    {"prompt": "a cat", "original_size": (64, 64), "crops_coords_top_left": (4, 0), "target_size": (32, 32),
     "negative_original_size": (16, 16), "negative_target_size": (32, 32)},
], ids=["negatives", "prompt2-rescale", "no-cfg", "micro-conditioning"])
def test_sdxl_text2img(xl, ref, kwargs):
    assert xl.guider.guidance_scale == 5.0  # the standard SDXL pipeline's default
    _compare(ref, xl, num_inference_steps=STEPS, **kwargs)


def test_sdxl_zero_negatives_and_denoising_end(xl, ref):
    state = xl(prompt="a cat", num_inference_steps=STEPS, output_type="latent")
    assert float(state.values["negative_prompt_embeds"].abs().max()) == 0.0  # force_zeros_for_empty_prompt
    _compare(ref, xl, output_type="latent", prompt=PROMPTS, num_inference_steps=6, denoising_end=0.6)


def test_sdxl_img2img(xl, folders):
    r = _ref(diffusers.StableDiffusionXLImg2ImgPipeline, folders)
    _compare(r, xl, prompt=PROMPTS, image=test_image(32), strength=0.7, num_images_per_prompt=2,
             num_inference_steps=STEPS + 2)
    # refiner-style continuation: start part-way, no extra noise
    _compare(r, xl, prompt="a cat", image=test_image(32), denoising_start=0.5, num_inference_steps=6)


def test_sdxl_inpaint(xl, folders):
    r = _ref(diffusers.StableDiffusionXLInpaintPipeline, folders)
    # the standard SDXL inpaint pipeline defaults to guidance 7.5 (the others to 5.0): pass it explicitly
    _compare(r, xl, prompt=PROMPTS, image=test_image(32), mask_image=test_image(32, mode="L"), strength=0.7,
             guidance_scale=7.5, num_images_per_prompt=2, num_inference_steps=STEPS + 1)


def test_sdxl_inpaint_denoising_start(xl, folders):
    r = _ref(diffusers.StableDiffusionXLInpaintPipeline, folders)
    _compare(r, xl, prompt="a cat", image=test_image(32), mask_image=test_image(32, mode="L"), guidance_scale=7.5,
             denoising_start=0.5, num_inference_steps=6)


def test_sdxl_workflows(xl):
    blocks = xl.blocks
    names = [type(b).__name__ for b in blocks.get_workflow("text2image").sub_blocks.values()]
    assert names == ["StableDiffusionXLTextEncoderStep", "StableDiffusionXLInputStep",
                     "StableDiffusionXLSetTimestepsStep", "StableDiffusionXLPrepareLatentsStep",
                     "StableDiffusionXLPrepareAdditionalConditioningStep", "StableDiffusionXLDenoiseStep",
                     "StableDiffusionXLDecodeStep"]
    i2i = [type(b).__name__ for b in blocks.get_workflow("image2image").sub_blocks.values()]
    # StableDiffusionXLVaeEncoderStep runs as its two leaves: the cacheable VAE encode, then the seeded sampling
    assert i2i[i2i.index("ImageVaeEncoderStep") + 1] == "SampleImageLatentsStep"
    assert "StableDiffusionXLImg2ImgPrepareLatentsStep" in i2i
    assert "controlnet_inpainting" in blocks.available_workflows


def test_sdxl_aesthetic_score_mismatch_is_clear(folders):
    pipe = ModularPipeline.from_pretrained(str(folders["sdxl"]))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    pipe.update_components(requires_aesthetics_score=True)
    with pytest.raises(BlockInputError, match="requires_aesthetics_score=False"):
        pipe(prompt="a", image=test_image(32), strength=0.5, num_inference_steps=4, output="images")


@pytest.mark.parametrize("guess_mode", [False, True])
def test_sdxl_controlnet(folders, ref, guess_mode):
    ours = ModularPipeline.from_pretrained(str(folders["sdxl"]))
    ours.load_components()
    ours.set_progress_bar_config(disable=True)
    ours.update_components(controlnet=ControlNetModel.from_pretrained(str(folders["controlnet"])))
    net = diffusers.ControlNetModel.from_pretrained(str(folders["controlnet"]))
    r = diffusers.StableDiffusionXLControlNetPipeline(**{k: v for k, v in ref.components.items()
                                                         if k not in ("image_encoder", "feature_extractor")},
                                                      controlnet=net)
    r.set_progress_bar_config(disable=True)
    control = test_image(32, seed=5)
    kw = dict(prompt=PROMPTS, num_inference_steps=STEPS, controlnet_conditioning_scale=0.6, guess_mode=guess_mode)
    expected = r(**kw, image=control, generator=torch.Generator().manual_seed(0), output_type="np").images
    got = ours(**kw, control_image=control, generator=torch.Generator().manual_seed(0), output_type="np",
               output="images")
    assert np.abs(got - expected).max() <= TOL


@pytest.fixture(scope="module")
def xl_cn(folders):
    """Our SDXL pipeline with the tiny SDXL ControlNet."""
    pipe = ModularPipeline.from_pretrained(str(folders["sdxl"]))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    pipe.update_components(controlnet=ControlNetModel.from_pretrained(str(folders["controlnet"])))
    return pipe


def _controlnet_ref(cls, ref, folders):
    net = diffusers.ControlNetModel.from_pretrained(str(folders["controlnet"]))
    pipe = cls(**ref.components, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _compare_controlnet(r, ours, control, **kw) -> float:
    """The reference takes the ControlNet image as `control_image` in its img2img/inpaint pipelines, as we do."""
    expected = r(**kw, control_image=control, generator=torch.Generator().manual_seed(0), output_type="np").images
    got = ours(**kw, control_image=control, generator=torch.Generator().manual_seed(0), output_type="np",
               output="images")
    assert got.shape == expected.shape and float(expected.std()) > 0.05
    err = float(np.abs(got - expected).max())
    assert err <= TOL, f"max abs difference {err:.2e} > {TOL}"
    # the ControlNet must matter, or parity above would not test it
    plain = {k: v for k, v in kw.items() if k not in ("controlnet_conditioning_scale", "guess_mode",
                                                      "control_guidance_start", "control_guidance_end")}
    without = ours(**plain, generator=torch.Generator().manual_seed(0), output_type="np", output="images")
    assert np.abs(without - got).max() > 1e-3
    return err


@pytest.mark.parametrize("kwargs", [
    {"prompt": PROMPTS, "strength": 0.7, "num_images_per_prompt": 2, "controlnet_conditioning_scale": 0.6},
    {"prompt": "a cat", "negative_prompt": "ugly", "strength": 0.8, "controlnet_conditioning_scale": 0.8,
     "guess_mode": True, "control_guidance_start": 0.2, "control_guidance_end": 0.8, "crops_coords_top_left": (4, 0)},
], ids=["batch", "guess-window"])
def test_sdxl_controlnet_img2img(xl_cn, ref, folders, kwargs):
    r = _controlnet_ref(diffusers.StableDiffusionXLControlNetImg2ImgPipeline, ref, folders)
    _compare_controlnet(r, xl_cn, test_image(32, seed=5), image=test_image(32), num_inference_steps=STEPS + 2,
                        **kwargs)


@pytest.mark.parametrize("kwargs", [
    {"prompt": PROMPTS, "strength": 0.7, "num_images_per_prompt": 2, "controlnet_conditioning_scale": 0.6},
    {"prompt": "a cat", "strength": 0.9999, "guess_mode": True, "control_guidance_end": 0.7},
], ids=["batch", "default-strength-guess"])
def test_sdxl_controlnet_inpaint(xl_cn, ref, folders, kwargs):
    r = _controlnet_ref(diffusers.StableDiffusionXLControlNetInpaintPipeline, ref, folders)
    _compare_controlnet(r, xl_cn, test_image(32, seed=5), image=test_image(32),
                        mask_image=test_image(32, mode="L"), num_inference_steps=STEPS + 1, **kwargs)
