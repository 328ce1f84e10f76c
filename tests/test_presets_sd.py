"""SD 1.5 / SD 2 presets: same images as the reference (diffusers) pipelines on tiny folders, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_sd import build_controlnet, build_sd2, build_sd15, test_image

from diffblocks import BlockInputError, ControlNetModel, ModularPipeline
from diffblocks.components.schedulers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

diffusers = pytest.importorskip("diffusers")

TOL = 1e-3
STEPS = 3


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd-folders")
    return {"sd15": build_sd15(root), "sd15-inpaint": build_sd15(root, inpaint=True), "sd2": build_sd2(root),
            "controlnet": build_controlnet(root)}


def _ours(path) -> ModularPipeline:
    pipe = ModularPipeline.from_pretrained(str(path))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ref(cls, path, **kwargs):
    pipe = cls.from_pretrained(str(path), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd15(folders):
    return _ours(folders["sd15"])


@pytest.fixture(scope="module")
def ref15(folders):
    return _ref(diffusers.StableDiffusionPipeline, folders["sd15"])


def _compare(ref, ours, **kwargs) -> None:
    seed = kwargs.pop("seed", 0)
    gens = kwargs.pop("n_generators", None)

    def gen():
        if gens:
            return [torch.Generator().manual_seed(seed + i) for i in range(gens)]
        return torch.Generator().manual_seed(seed)

    expected = ref(**kwargs, generator=gen(), output_type="np").images
    got = ours(**kwargs, generator=gen(), output_type="np", output="images")
    assert got.shape == expected.shape
    assert expected.std() > 0.05  # a non-trivial image, so a mismatch would show
    err = np.abs(got - expected).max()
    assert err <= TOL, f"max abs difference {err:.2e} > {TOL}"


PROMPTS = ["a red cat", "a blue dog"]


def test_sd15_text2img_default_pndm(sd15, ref15):
    assert type(sd15.scheduler).__name__ == "PNDMScheduler"
    _compare(ref15, sd15, prompt=PROMPTS, negative_prompt=["ugly", "bad"], num_images_per_prompt=2,
             num_inference_steps=STEPS)


@pytest.mark.parametrize("kind", ["euler", "dpmpp_2m_karras"])
def test_sd15_text2img_swapped_schedulers(folders, ref15, kind):
    ours = _ours(folders["sd15"])
    if kind == "euler":
        ours.update_components(scheduler=EulerDiscreteScheduler.from_config(ours.scheduler.config))
        ref_sched = diffusers.EulerDiscreteScheduler.from_config(ref15.scheduler.config)
    else:
        ours.update_components(scheduler=DPMSolverMultistepScheduler.from_config(
            ours.scheduler.config, use_karras_sigmas=True, algorithm_type="dpmsolver++", solver_order=2))
        ref_sched = diffusers.DPMSolverMultistepScheduler.from_config(
            ref15.scheduler.config, use_karras_sigmas=True, algorithm_type="dpmsolver++", solver_order=2)
    ref = diffusers.StableDiffusionPipeline(**{**ref15.components, "scheduler": ref_sched})
    ref.set_progress_bar_config(disable=True)
    _compare(ref, ours, prompt=PROMPTS, num_images_per_prompt=2, num_inference_steps=STEPS + 1)


@pytest.mark.parametrize("kwargs", [
    {"guidance_scale": 1.0},
    {"guidance_rescale": 0.7, "negative_prompt": "blurry"},
], ids=["no-cfg", "rescale"])
def test_sd15_text2img_guidance_options(sd15, ref15, kwargs):
    _compare(ref15, sd15, prompt="a red cat", num_inference_steps=STEPS, **kwargs)
    assert sd15.guider.guidance_scale == 7.5  # per-call overrides leave the component alone


def test_sd15_clip_skip(sd15, ref15):
    # the reference's clip_skip path needs `text_encoder.text_model` (gone in transformers 5), so compute the
    # embeddings by the formula and give them to the reference as prompt_embeds
    te, tok = ref15.text_encoder, ref15.tokenizer
    ids = tok(PROMPTS, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = te(ids, output_hidden_states=True).hidden_states[-2]
        pe = te.final_layer_norm(hidden)
    kw = dict(num_inference_steps=STEPS, guidance_scale=1.0, output_type="np")
    expected = ref15(prompt_embeds=pe, generator=torch.Generator().manual_seed(0), **kw).images
    got = sd15(prompt=PROMPTS, clip_skip=1, generator=torch.Generator().manual_seed(0), output="images", **kw)
    assert np.abs(got - expected).max() <= TOL
    plain = sd15(prompt=PROMPTS, generator=torch.Generator().manual_seed(0), output="images", **kw)
    assert np.abs(got - plain).max() > TOL


def test_sd15_generator_list_and_latents(sd15, ref15):
    _compare(ref15, sd15, prompt=PROMPTS, num_images_per_prompt=2, num_inference_steps=STEPS, n_generators=4)
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    expected = ref15(prompt=PROMPTS, latents=latents, num_inference_steps=STEPS, output_type="np").images
    got = sd15(prompt=PROMPTS, latents=latents, num_inference_steps=STEPS, output_type="np", output="images")
    assert np.abs(got - expected).max() <= TOL


def test_sd15_precomputed_embeddings(sd15, ref15):
    pe, npe = ref15.encode_prompt(PROMPTS, "cpu", 1, True, ["x", "y"])
    _compare(ref15, sd15, prompt_embeds=pe, negative_prompt_embeds=npe, num_inference_steps=STEPS)


def test_sd2_v_prediction(folders):
    ours = _ours(folders["sd2"])
    assert ours.scheduler.config.prediction_type == "v_prediction"
    ref = _ref(diffusers.StableDiffusionPipeline, folders["sd2"])
    _compare(ref, ours, prompt=PROMPTS, negative_prompt=["ugly", "bad"], num_images_per_prompt=2,
             num_inference_steps=STEPS)


def test_sd15_img2img(sd15, folders):
    ref = _ref(diffusers.StableDiffusionImg2ImgPipeline, folders["sd15"])
    _compare(ref, sd15, prompt=PROMPTS, image=test_image(32), strength=0.7, num_images_per_prompt=2,
             num_inference_steps=STEPS + 2)
    _compare(ref, sd15, prompt="a cat", image=test_image(32), strength=0.7, num_images_per_prompt=2,
             num_inference_steps=STEPS + 2, n_generators=2)


@pytest.mark.parametrize("folder", ["sd15", "sd15-inpaint"], ids=["4ch", "9ch"])
@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_sd15_inpaint(folders, folder, strength):
    ours = _ours(folders[folder])
    ref = _ref(diffusers.StableDiffusionInpaintPipeline, folders[folder])
    _compare(ref, ours, prompt=PROMPTS, image=test_image(32), mask_image=test_image(32, mode="L"),
             strength=strength, num_images_per_prompt=2 if strength < 1 else 1, num_inference_steps=STEPS + 1)


def test_sd15_inpaint_padding_mask_crop(sd15, folders):
    ref = _ref(diffusers.StableDiffusionInpaintPipeline, folders["sd15"])
    image, mask = test_image(48), test_image(48, mode="L")
    kw = dict(prompt="a cat", image=image, mask_image=mask, padding_mask_crop=2, height=32, width=32,
              num_inference_steps=STEPS)
    expected = ref(**kw, generator=torch.Generator().manual_seed(0)).images[0]
    got = sd15(**kw, generator=torch.Generator().manual_seed(0), output="images")[0]
    assert got.size == expected.size == image.size
    assert np.abs(np.asarray(got, dtype=np.int16) - np.asarray(expected, dtype=np.int16)).max() <= 1


def _controlnet_ref(ref15, nets, **kw):
    net = nets if len(nets) > 1 else nets[0]
    components = {k: v for k, v in ref15.components.items() if k != "image_encoder"}
    pipe = diffusers.StableDiffusionControlNetPipeline(**components, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("case", ["single", "guess", "window", "multi"])
def test_sd15_controlnet(folders, ref15, case):
    ours = _ours(folders["sd15"])
    ref_net = diffusers.ControlNetModel.from_pretrained(str(folders["controlnet"]))
    our_net = ControlNetModel.from_pretrained(str(folders["controlnet"]))
    control = test_image(32, seed=5)
    kw: dict = dict(prompt=PROMPTS, num_inference_steps=STEPS + 1)
    if case == "multi":
        ours.update_components(controlnet=[our_net, our_net])
        ref = _controlnet_ref(ref15, [ref_net, ref_net])
        kw.update(image=[control, test_image(32, seed=6)], controlnet_conditioning_scale=[0.5, 0.8],
                  control_guidance_end=[1.0, 0.5])
    else:
        ours.update_components(controlnet=our_net)
        ref = _controlnet_ref(ref15, [ref_net])
        kw.update(image=control, controlnet_conditioning_scale=0.7, num_images_per_prompt=2)
        if case == "guess":
            kw["guess_mode"] = True
        if case == "window":
            kw.update(control_guidance_start=0.25, control_guidance_end=0.75)
    expected = ref(**kw, generator=torch.Generator().manual_seed(0), output_type="np").images
    kw["control_image"] = kw.pop("image")
    got = ours(**kw, generator=torch.Generator().manual_seed(0), output_type="np", output="images")
    assert np.abs(got - expected).max() <= TOL
    without = ours(**{k: v for k, v in kw.items() if k not in ("control_image", "controlnet_conditioning_scale",
                                                               "guess_mode", "control_guidance_start",
                                                               "control_guidance_end")},
                   generator=torch.Generator().manual_seed(0), output_type="np", output="images")
    assert np.abs(without - got).max() > 1e-3  # the ControlNet changed the image


def test_sd15_guidance_embedding_unet(tmp_path):
    # guidance-distilled (LCM-style) UNets get the guidance scale as timestep_cond
    folder = build_sd15(tmp_path, name="sd15-lcm", time_cond_proj_dim=8)
    _compare(_ref(diffusers.StableDiffusionPipeline, folder), _ours(folder), prompt="a red cat",
             num_inference_steps=STEPS, guidance_scale=3.0)


def test_callback_and_progress(sd15, ref15):
    seen = []

    def callback(pipe, step, timestep, kwargs):
        seen.append(int(step))
        return {"latents": kwargs["latents"] * 0.5} if step == 0 else {}

    got = sd15(prompt="a cat", num_inference_steps=STEPS, callback_on_step_end=callback, output_type="latent",
               generator=torch.Generator().manual_seed(0), output="images")

    def ref_callback(pipe, step, timestep, kwargs):
        return {"latents": kwargs["latents"] * 0.5} if step == 0 else {}

    expected = ref15(prompt="a cat", num_inference_steps=STEPS, callback_on_step_end=ref_callback,
                     output_type="latent", generator=torch.Generator().manual_seed(0)).images
    assert seen == list(range(len(sd15.scheduler.timesteps)))
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


# -- auto preset, workflows, errors ----------------------------------------------------------------------------------
def test_auto_preset_workflows(sd15):
    blocks = sd15.blocks
    assert set(blocks.available_workflows) >= {"text2image", "image2image", "inpainting", "controlnet_text2image"}
    t2i = blocks.get_workflow("text2image")
    names = [type(b).__name__ for b in t2i.sub_blocks.values()]
    assert names == ["StableDiffusionTextEncoderStep", "StableDiffusionInputStep", "SetTimestepsStep",
                     "PrepareLatentsStep", "DenoiseStep", "DecodeStep"]
    inpaint = [type(b).__name__ for b in blocks.get_workflow("inpainting").sub_blocks.values()]
    # the inpainting latents run as their two leaves: the cacheable VAE encode, then the seeded sampling
    assert inpaint[inpaint.index("InpaintImageVaeEncoderStep") + 1] == "InpaintSampleLatentsStep"
    assert "InpaintDenoiseStep" in inpaint
    cn = [type(b).__name__ for b in blocks.get_workflow("controlnet_text2image").sub_blocks.values()]
    assert "ControlNetInputStep" in cn and "ControlNetDenoiseStep" in cn
    for trigger in ("mask_image", "control_image", "`image`"):
        assert trigger in blocks.description


def _raises(pipe, match: str, **kwargs):
    with pytest.raises(BlockInputError, match=match) as info:
        pipe(num_inference_steps=2, output="images", output_type="latent", **kwargs)
    return info.value


def test_bad_inputs(sd15):
    err = _raises(sd15, "prompt_embeds", prompt="a", prompt_embeds=torch.zeros(1, 16, 32))
    assert err.block == "StableDiffusionTextEncoderStep"
    err = _raises(sd15, "strength", prompt="a", image=test_image(32), strength=1.5)
    assert err.input_name == "strength"
    err = _raises(sd15, "generator", prompt=["a", "b"], generator=[torch.Generator()] * 3)
    assert err.input_name == "generator"
    _raises(sd15, "image", prompt="a", mask_image=test_image(32, mode="L"))  # mask without image
    _raises(sd15, "mode", prompt="a", image=test_image(32).convert("CMYK"))
    _raises(sd15, "multiples of", prompt="a", height=30, width=32)
    _raises(sd15, "mask_image", prompt="a", image=test_image(32), mask_image=test_image(16, mode="L"), height=None)


def _controlnet_variant_ref(cls, folder, net):
    ref = _ref(diffusers.StableDiffusionPipeline, folder)
    components = {k: v for k, v in ref.components.items() if k != "image_encoder"}
    pipe = cls(**components, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _compare_controlnet(ref, ours, **kw) -> float:
    """`control_image` is the ControlNet input in the reference img2img/inpaint ControlNet pipelines and ours."""
    expected = ref(**kw, generator=torch.Generator().manual_seed(0), output_type="np").images
    got = ours(**kw, generator=torch.Generator().manual_seed(0), output_type="np", output="images")
    assert got.shape == expected.shape and expected.std() > 0.05
    err = float(np.abs(got - expected).max())
    assert err <= TOL, f"max abs difference {err:.2e} > {TOL}"
    plain = {k: v for k, v in kw.items() if k not in ("control_image", "controlnet_conditioning_scale", "guess_mode",
                                                      "control_guidance_start", "control_guidance_end")}
    without = ours(**plain, generator=torch.Generator().manual_seed(0), output_type="np", output="images")
    assert np.abs(without - got).max() > 1e-3  # the ControlNet changed the image
    return err


@pytest.mark.parametrize("kwargs", [
    {"prompt": PROMPTS, "strength": 0.7, "num_images_per_prompt": 2, "controlnet_conditioning_scale": 0.6},
    {"prompt": "a cat", "negative_prompt": "ugly", "strength": 0.8, "controlnet_conditioning_scale": 0.8,
     "guess_mode": True, "control_guidance_start": 0.2, "control_guidance_end": 0.8},
], ids=["batch", "guess-window"])
def test_sd15_controlnet_img2img(folders, kwargs):
    net = diffusers.ControlNetModel.from_pretrained(str(folders["controlnet"]))
    ref = _controlnet_variant_ref(diffusers.StableDiffusionControlNetImg2ImgPipeline, folders["sd15"], net)
    ours = _ours(folders["sd15"])
    ours.update_components(controlnet=ControlNetModel.from_pretrained(str(folders["controlnet"])))
    _compare_controlnet(ref, ours, image=test_image(32), control_image=test_image(32, seed=5),
                        num_inference_steps=STEPS + 2, **kwargs)


@pytest.mark.parametrize("folder,kwargs", [
    ("sd15", {"prompt": PROMPTS, "strength": 0.7, "num_images_per_prompt": 2, "controlnet_conditioning_scale": 0.6}),
    ("sd15-inpaint", {"prompt": "a cat", "strength": 1.0, "controlnet_conditioning_scale": 0.5,
                      "guess_mode": True, "control_guidance_end": 0.7}),
], ids=["unet4-batch", "unet9-guess"])
def test_sd15_controlnet_inpaint(folders, folder, kwargs):
    net = diffusers.ControlNetModel.from_pretrained(str(folders["controlnet"]))
    ref = _controlnet_variant_ref(diffusers.StableDiffusionControlNetInpaintPipeline, folders[folder], net)
    ours = _ours(folders[folder])
    ours.update_components(controlnet=ControlNetModel.from_pretrained(str(folders["controlnet"])))
    _compare_controlnet(ref, ours, image=test_image(32), mask_image=test_image(32, mode="L"),
                        control_image=test_image(32, seed=5), num_inference_steps=STEPS + 1, **kwargs)
