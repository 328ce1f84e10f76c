"""Single-file (LDM / BFL layout) checkpoints: conversion checked against the reference, images against the
reference's `from_single_file` and the original folders, detection, and errors for bad input.

The files are written from tiny diffusers folders by `single_file_fixtures` (the inverse key mapping). The
reference (diffusers `from_single_file(file, config=folder)`) loading them to the folder's exact tensors shows
they are genuine original-layout files; ours must then give the same tensors and the same images.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from fixtures_flux import MAX_SEQUENCE_LENGTH, build_flux
from fixtures_sd import build_controlnet, build_sd2, build_sd15, build_sdxl, build_sdxl_refiner, test_image
from model_fixtures import CONTROLNET, save_reference
from safetensors.torch import load_file, save_file
from single_file_fixtures import (
    flux_to_bfl,
    write_controlnet_file,
    write_flux_file,
    write_sd_file,
)

from diffblocks import (
    AutoencoderKL,
    CheckpointError,
    ControlNetModel,
    FluxTransformer2DModel,
    ModularPipeline,
    UNet2DConditionModel,
)
from diffblocks.components.single_file import LoraFileError, SingleFile, UnknownCheckpointError, detect

diffusers = pytest.importorskip("diffusers")
logging.getLogger("diffusers").setLevel(logging.ERROR)

TOL = 1e-4
SD_KINDS = {"sd15": "sd15", "sd15-inpaint": "sd15", "sd2": "sd2", "sdxl": "sdxl", "sdxl-refiner": "sdxl_refiner"}
FAMILY = {"sd15": "sd15", "sd15-inpaint": "sd15_inpaint", "sd2": "sd21", "sdxl": "sdxl", "sdxl-refiner": "sdxl_refiner"}
TEXT_ENCODERS = {"sd15": ["text_encoder"], "sd15-inpaint": ["text_encoder"], "sd2": ["text_encoder"],
                 "sdxl": ["text_encoder", "text_encoder_2"], "sdxl-refiner": ["text_encoder_2"]}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("single-file")
    folders = {"sd15": build_sd15(root), "sd15-inpaint": build_sd15(root, inpaint=True), "sd2": build_sd2(root),
               "sdxl": build_sdxl(root), "sdxl-refiner": build_sdxl_refiner(root), "flux": build_flux(root),
               "controlnet": build_controlnet(root)}
    # the reference's converter assumes the standard four-stage conditioning embedding: check the mapping on one
    save_reference("ControlNetModel", CONTROLNET, root / "controlnet-std", seed=7)
    folders["controlnet-std"] = root / "controlnet-std"
    files = {name: write_sd_file(folders[name], root / f"{name}.safetensors", kind) for name, kind in SD_KINDS.items()}
    files["flux"] = write_flux_file(folders["flux"], root / "flux.safetensors")
    files["flux-prefixed"] = write_flux_file(folders["flux"], root / "flux-prefixed.safetensors", "model.diffusion_model.")
    files["controlnet"] = write_controlnet_file(folders["controlnet"], root / "controlnet.safetensors")
    files["controlnet-std"] = write_controlnet_file(folders["controlnet-std"], root / "cn-std.safetensors", prefix="")
    files["sd15-unet-only"] = write_sd_file(folders["sd15"], root / "unet-only.safetensors", with_text_encoders=False,
                                            with_vae=False)
    return folders, files, root


def _same_tensors(ours: torch.nn.Module, expected: torch.nn.Module, what: str) -> None:
    a, b = ours.state_dict(), expected.state_dict()
    assert set(a) == set(b), f"{what}: key sets differ: {sorted(set(a) ^ set(b))[:5]}"
    bad = [k for k in b if not torch.equal(a[k], b[k])]
    assert not bad, f"{what}: {len(bad)} tensors differ, e.g. {bad[:3]}"


# -- conversion: the reference and ours load the files to the folder's tensors -----------------------------------
@pytest.mark.parametrize("name", list(SD_KINDS))
def test_ldm_file_models_match_reference_and_folder(made, name):
    folders, files, _ = made
    folder, file = folders[name], files[name]
    for ours_cls, sub in ((UNet2DConditionModel, "unet"), (AutoencoderKL, "vae")):
        ref_cls = getattr(diffusers, ours_cls.__name__)
        expected = ref_cls.from_pretrained(str(folder), subfolder=sub)
        _same_tensors(ref_cls.from_single_file(str(file), config=str(folder), subfolder=sub), expected, f"reference {sub}")
        _same_tensors(ours_cls.from_single_file(file, config=folder), expected, f"our {sub}")
    pipe = ModularPipeline.from_single_file(file, config=folder)
    import transformers

    for te in TEXT_ENCODERS[name]:
        expected = getattr(transformers, type(getattr(pipe, te)).__name__).from_pretrained(str(folder), subfolder=te)
        _same_tensors(getattr(pipe, te), expected, te)


def test_controlnet_file_matches_reference(made):
    folders, files, _ = made
    folder = folders["controlnet-std"]
    expected = diffusers.ControlNetModel.from_pretrained(str(folder))
    _same_tensors(diffusers.ControlNetModel.from_single_file(str(files["controlnet-std"]), config=str(folder)),
                  expected, "reference controlnet")
    _same_tensors(ControlNetModel.from_single_file(files["controlnet-std"], config=folder), expected, "our controlnet")
    # a two-stage conditioning embedding (the tiny pipelines' ControlNet) is placed from the config too
    _same_tensors(ControlNetModel.from_single_file(files["controlnet"], config=folders["controlnet"]),
                  diffusers.ControlNetModel.from_pretrained(str(folders["controlnet"])), "controlnet [8, 16]")


def test_diffusers_named_controlnet_file(made, tmp_path):
    folders, _, _ = made
    source = folders["controlnet"] / "diffusion_pytorch_model.safetensors"
    path = tmp_path / "controlnet-xl-style.safetensors"
    path.write_bytes(source.read_bytes())
    _same_tensors(ControlNetModel.from_single_file(path, config=folders["controlnet"]),
                  diffusers.ControlNetModel.from_pretrained(str(folders["controlnet"])), "diffusers-named controlnet")


@pytest.mark.parametrize("which", ["flux", "flux-prefixed"])
def test_flux_file_matches_folder(made, which):
    folders, files, _ = made
    expected = diffusers.FluxTransformer2DModel.from_pretrained(str(folders["flux"]), subfolder="transformer")
    _same_tensors(FluxTransformer2DModel.from_single_file(files[which], config=folders["flux"]), expected, "flux")


def test_flux_mapping_matches_reference_converter_at_full_width(made, tmp_path):
    """The reference's converter fixes the FLUX.1 widths (3072 inner, 12288 MLP), so the BFL mapping is checked on
    a state dict with those fused-row widths (narrow columns keep it small), in both directions."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from diffblocks.components.single_file.convert_flux import flux_plan

    folders, _, _ = made
    state = load_file(str(folders["flux"] / "transformer" / "diffusion_pytorch_model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    wide = {}
    for key, value in state.items():
        rows = 3072 if any(f"attn.{p}." in key for p in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj",
                                                           "add_v_proj")) else 12288 if ".proj_mlp." in key else None
        wide[key] = value.clone() if rows is None else torch.randn((rows, 1) if key.endswith("weight") else (rows,),
                                                                   generator=gen)
    bfl = flux_to_bfl(wide)
    converted = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    assert set(converted) == set(wide) and all(torch.equal(converted[k], wide[k]) for k in wide)
    save_file(bfl, str(tmp_path / "wide.safetensors"))
    plan = flux_plan({k: tuple(v.shape) for k, v in wide.items()}, {"num_attention_heads": 24, "attention_head_dim": 128}, "")
    assert set(plan) == set(wide)
    with SingleFile(tmp_path / "wide.safetensors") as f:
        assert all(torch.equal(plan[k].read(f, None), wide[k]) for k in wide)


# -- detection ---------------------------------------------------------------------------------------------------
def test_detects_families_and_components(made, tmp_path):
    _, files, _ = made
    for name, family in FAMILY.items():
        with SingleFile(files[name]) as f:
            found = detect(f)
        assert found.family.name == family, name
        assert {"unet", "vae", *TEXT_ENCODERS[name]} == set(found.components), name
    with SingleFile(files["sd2"]) as f:
        found = detect(f)
    assert (found.prediction_type, found.upcast_attention) == ("v_prediction", True)
    for which in ("flux", "flux-prefixed"):
        with SingleFile(files[which]) as f:
            assert detect(f).family.name == "flux_dev"
    schnell = {k: v for k, v in load_file(str(files["flux"])).items() if not k.startswith("guidance_in.")}
    save_file(schnell, str(tmp_path / "schnell.safetensors"))
    with SingleFile(tmp_path / "schnell.safetensors") as f:
        assert detect(f).family.name == "flux_schnell"
    with SingleFile(files["controlnet"]) as f:
        assert detect(f).family.name == "controlnet"
    with SingleFile(files["sd15-unet-only"]) as f:
        found = detect(f)
    assert found.family.name == "sd15" and set(found.components) == {"unet"}


# -- images ------------------------------------------------------------------------------------------------------
def _images(pipe, ours: bool, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"num_inference_steps": 2, "generator": torch.Generator().manual_seed(0), "output_type": "np", **kwargs}
    if ours:
        return pipe(**kwargs, output="images")
    if "control_image" in kwargs:
        kwargs["image"] = kwargs.pop("control_image")
    return pipe(**kwargs).images


def _check(*images):
    assert images[0].std() > 0.05
    for other in images[1:]:
        assert other.shape == images[0].shape
        err = np.abs(other - images[0]).max()
        assert err <= TOL, f"max abs difference {err:.2e} > {TOL}"


def _folder_pipe_unet_config(folder):
    return UNet2DConditionModel.from_pretrained(folder, subfolder="unet").config


@pytest.mark.parametrize("name, ref_cls, kwargs", [
    ("sd15", "StableDiffusionPipeline", {"prompt": "a red cat", "negative_prompt": "ugly"}),
    ("sd2", "StableDiffusionPipeline", {"prompt": "a red cat"}),
    ("sdxl", "StableDiffusionXLPipeline", {"prompt": "a red cat", "height": 32, "width": 32}),
    ("sd15-inpaint", "StableDiffusionInpaintPipeline", {"prompt": "a red cat", "image": test_image(32),
                                                        "mask_image": test_image(32, mode="L"), "strength": 1.0}),
])
def test_sd_pipeline_images_match_reference_single_file_and_folder(made, name, ref_cls, kwargs):
    folders, files, _ = made
    ours = ModularPipeline.from_single_file(files[name], config=folders[name])
    ref = getattr(diffusers, ref_cls).from_single_file(str(files[name]), config=str(folders[name]))
    # same images as the reference's from_single_file; the same as the original folder follows from identical
    # tensors (test_ldm_file_models_match_reference_and_folder) and the same configs
    _check(_images(ref, False, **kwargs), _images(ours, True, **kwargs))
    assert ours.unet.config == _folder_pipe_unet_config(folders[name])


def test_flux_transformer_file_with_config_matches_folder(made):
    """The reference's Flux converter only handles the full FLUX.1 widths, so the tiny file is compared with the
    reference pipeline on the original folder (its mapping is checked at full width above)."""
    folders, files, _ = made
    kwargs = {"prompt": "a red cat", "height": 32, "width": 32, "max_sequence_length": MAX_SEQUENCE_LENGTH}
    ours = ModularPipeline.from_single_file(files["flux"], config=folders["flux"])
    assert ours.null_component_names == []
    ref = diffusers.FluxPipeline.from_pretrained(str(folders["flux"]))
    _check(_images(ref, False, **kwargs), _images(ours, True, **kwargs))


def test_controlnet_file_pipeline_matches_reference(made):
    folders, files, _ = made
    net = ControlNetModel.from_single_file(files["controlnet"], config=folders["controlnet"])
    ours = ModularPipeline.from_single_file(files["sd15"], config=folders["sd15"], controlnet=net)
    ref = diffusers.StableDiffusionControlNetPipeline.from_single_file(
        str(files["sd15"]), config=str(folders["sd15"]),
        controlnet=diffusers.ControlNetModel.from_pretrained(str(folders["controlnet"])))
    kwargs = {"prompt": "a red cat", "control_image": test_image(32, seed=5), "controlnet_conditioning_scale": 0.7}
    _check(_images(ref, False, **kwargs), _images(ours, True, **kwargs))


def test_prediction_type_override(made):
    folders, files, _ = made
    pipe = ModularPipeline.from_single_file(files["sd2"], config=folders["sd2"], prediction_type="epsilon")
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert ModularPipeline.from_single_file(files["sd2"], config=folders["sd2"]).scheduler.config.prediction_type == "v_prediction"


# -- bad input ---------------------------------------------------------------------------------------------------
def test_unknown_architecture_lists_closest_families(tmp_path):
    path = tmp_path / "mystery.safetensors"
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(6, 2), "head.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(UnknownCheckpointError, match="matches no supported single-file family") as info:
        ModularPipeline.from_single_file(path)
    assert "Closest:" in str(info.value) and "blocks.0.attn.qkv.weight" in str(info.value)


def test_truncated_file(made, tmp_path):
    _, files, _ = made
    data = files["sd15"].read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        ModularPipeline.from_single_file(path)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        UNet2DConditionModel.from_single_file(path)


def test_lora_file_is_refused_with_how_to_load_it(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}, str(path))
    with pytest.raises(LoraFileError, match="LoRA adapter file.*load_lora_weights"):
        ModularPipeline.from_single_file(path)


def test_family_config_mismatch(made):
    folders, files, _ = made
    with pytest.raises(CheckpointError, match="family/config mismatch.*Stable Diffusion XL base"):
        ModularPipeline.from_single_file(files["sdxl"], config=folders["sd15"])
    with pytest.raises(CheckpointError, match="shape mismatches.*family/config mismatch"):
        UNet2DConditionModel.from_single_file(files["sd15"], config=folders["sd2"])


def test_component_not_in_file_and_lone_controlnet(made):
    _, files, _ = made
    with pytest.raises(CheckpointError, match="holds no vae: it holds \\['unet'\\]"):
        AutoencoderKL.from_single_file(files["sd15-unet-only"])
    with pytest.raises(CheckpointError, match="lone ControlNet.*ControlNetModel.from_single_file"):
        ModularPipeline.from_single_file(files["controlnet"])


def test_pickled_checkpoint_is_refused(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="pickled checkpoint"):
        ModularPipeline.from_single_file(path)


def test_missing_file_and_hub_file_references(tmp_path):
    from diffblocks.components.single_file.reader import _HUB_URL

    with pytest.raises(FileNotFoundError, match="does not exist.*org/repo/file.safetensors"):
        ModularPipeline.from_single_file(tmp_path / "nope.safetensors")
    url = "https://huggingface.co/org/repo/blob/main/sub/model.safetensors"
    assert _HUB_URL.fullmatch(url).groups() == ("org/repo", "main", "sub/model.safetensors")

