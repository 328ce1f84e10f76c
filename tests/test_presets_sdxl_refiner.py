"""SDXL refiner folders (text_encoder_2 only, aesthetic-score UNet): same images as the reference pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_sd import build_sdxl, build_sdxl_refiner, test_image

from diffblocks import BlockInputError, ModularPipeline

diffusers = pytest.importorskip("diffusers")

TOL = 1e-3
PROMPTS = ["a red cat", "a blue dog"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl-refiner-folders")
    return {"base": build_sdxl(root), "refiner": build_sdxl_refiner(root)}


def _ours(path) -> ModularPipeline:
    pipe = ModularPipeline.from_pretrained(str(path))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ref(cls, path):
    pipe = cls.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def refiner(folders):
    return _ours(folders["refiner"])


@pytest.fixture(scope="module")
def ref_refiner(folders):
    return _ref(diffusers.StableDiffusionXLImg2ImgPipeline, folders["refiner"])


def _run(pipe, ours: bool, output_type: str = "np", **kwargs):
    gen = torch.Generator().manual_seed(0)
    if ours:
        return pipe(**kwargs, generator=gen, output_type=output_type, output="images")
    return pipe(**kwargs, generator=gen, output_type=output_type).images


def _compare(ref, ours, output_type: str = "np", **kwargs) -> float:
    expected = _run(ref, False, output_type, **kwargs)
    got = _run(ours, True, output_type, **kwargs)
    assert got.shape == expected.shape
    assert float(expected.std()) > 0.05  # a non-trivial output, so a mismatch would show
    err = float(np.abs(np.asarray(got) - np.asarray(expected)).max())
    assert err <= TOL, f"max abs difference {err:.2e} > {TOL}"
    return err


def test_refiner_folder_loads_without_text_encoder(refiner):
    assert refiner.text_encoder is None and refiner.tokenizer is None
    assert refiner.text_encoder_2 is not None
    assert refiner.requires_aesthetics_score is True
    assert refiner.force_zeros_for_empty_prompt is False
    state = refiner(prompt="a cat", image=test_image(32), num_inference_steps=4, output_type="latent")
    # time ids: original size (2) + crop top-left (2) + aesthetic score (1), defaults 6.0 / 2.5
    assert state.values["add_time_ids"][0].tolist() == [32.0, 32.0, 0.0, 0.0, 6.0]
    assert state.values["negative_add_time_ids"][0].tolist() == [32.0, 32.0, 0.0, 0.0, 2.5]
    # force_zeros_for_empty_prompt is off: the empty negative prompt is encoded, not zeros
    assert float(state.values["negative_prompt_embeds"].abs().max()) > 0
    assert state.values["prompt_embeds"].shape[-1] == refiner.text_encoder_2.config.hidden_size


@pytest.mark.parametrize("kwargs", [
    {"prompt": PROMPTS, "strength": 0.6, "num_inference_steps": 5},
    {"prompt": PROMPTS, "negative_prompt": ["ugly", "bad"], "aesthetic_score": 8.0, "negative_aesthetic_score": 1.0,
     "num_images_per_prompt": 2, "strength": 0.7, "num_inference_steps": 4},
    {"prompt": "a cat", "aesthetic_score": 3.0, "negative_aesthetic_score": 4.5, "original_size": (64, 64),
     "crops_coords_top_left": (8, 0), "negative_original_size": (16, 16), "strength": 0.5,
     "num_inference_steps": 6},
], ids=["default-scores", "scores-negatives", "scores-micro-conditioning"])
def test_refiner_img2img(refiner, ref_refiner, kwargs):
    _compare(ref_refiner, refiner, image=test_image(32), **kwargs)


def test_refiner_aesthetic_score_changes_image(refiner):
    kw = dict(prompt="a cat", image=test_image(32), strength=0.7, num_inference_steps=4)
    low = _run(refiner, True, aesthetic_score=1.0, **kw)
    high = _run(refiner, True, aesthetic_score=9.0, **kw)
    assert np.abs(low - high).max() > 1e-3  # the score reaches the UNet


def test_base_refiner_handoff(folders, refiner, ref_refiner):
    """Base with denoising_end, refiner with denoising_start on the base's latents (the ensemble-of-experts pattern)."""
    base = _ours(folders["base"])
    ref_base = _ref(diffusers.StableDiffusionXLPipeline, folders["base"])
    kw = dict(prompt=PROMPTS, num_inference_steps=8)
    base_kw = dict(kw, denoising_end=0.75)
    expected_latents = _run(ref_base, False, "latent", **base_kw)
    latents = _run(base, True, "latent", **base_kw)
    assert float(torch.abs(latents - expected_latents).max()) <= TOL
    refine_kw = dict(kw, denoising_start=0.75, aesthetic_score=7.0, negative_aesthetic_score=2.0)
    expected = ref_refiner(image=expected_latents, **refine_kw, generator=torch.Generator().manual_seed(1),
                           output_type="np").images
    got = refiner(image=latents, **refine_kw, generator=torch.Generator().manual_seed(1), output_type="np",
                  output="images")
    assert got.shape == expected.shape and float(expected.std()) > 0.05
    err = float(np.abs(got - expected).max())
    assert err <= TOL, f"max abs difference {err:.2e} > {TOL}"


def test_refiner_denoising_start_on_pixels(refiner, ref_refiner):
    _compare(ref_refiner, refiner, prompt="a cat", image=test_image(32), denoising_start=0.5, num_inference_steps=6,
             aesthetic_score=5.0)


def test_refiner_text2img_is_a_clear_error(refiner):
    # a refiner UNet expects aesthetic-score time ids, which only the image-to-image steps provide
    with pytest.raises(BlockInputError, match="refiner .*image-to-image only"):
        refiner(prompt="a cat", num_inference_steps=2, output="images")


def test_refiner_inpaint(folders, refiner):
    # the inpainting pipeline on a refiner folder conditions on aesthetic scores as well
    ref = _ref(diffusers.StableDiffusionXLInpaintPipeline, folders["refiner"])
    _compare(ref, refiner, prompt=PROMPTS, image=test_image(32), mask_image=test_image(32, mode="L"), strength=0.7,
             guidance_scale=7.5, aesthetic_score=7.5, negative_aesthetic_score=2.0, num_inference_steps=4)
