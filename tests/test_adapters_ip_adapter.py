"""IP-Adapter on SD 1.5 and SDXL (tiny): adapter files in the reference's layout (built here) give the same images
as the reference pipelines with CFG; scale 0 equals no adapter; unload gives the exact base image; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from adapter_fixtures import (
    add_image_encoder,
    assert_close,
    random_ip_adapter,
    save_ip_adapter,
    seeded_images,
)
from fixtures_sd import build_sd15, build_sdxl, test_image

from diffblocks.components.adapters import AdapterFileError, adapter_version
from diffblocks.presets.sd import AUTO_BLOCKS as SD_AUTO_BLOCKS
from diffblocks.presets.sd.encoders import StableDiffusionAutoIPAdapterStep
from diffblocks.presets.sdxl import StableDiffusionXLAutoBlocks
from diffblocks.presets.sdxl.encoders import StableDiffusionXLAutoIPAdapterStep

diffusers = pytest.importorskip("diffusers")
KW = dict(prompt="a red cat", negative_prompt="blurry", num_inference_steps=2)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip-adapter")
    sd15, sdxl = build_sd15(root), build_sdxl(root)
    for folder in (sd15, sdxl):
        add_image_encoder(folder)
        ref = _ref(folder)
        state = random_ip_adapter(ref.unet, seed=7)
        save_ip_adapter(state, folder / "ip" / "ip-adapter.safetensors")
        save_ip_adapter(state, folder / "ip" / "ip-adapter.bin")
        save_ip_adapter(random_ip_adapter(ref.unet, seed=8), folder / "ip" / "second.safetensors")
    return {"sd15": sd15, "sdxl": sdxl}


def _ref(folder):
    cls = diffusers.StableDiffusionXLPipeline if "sdxl" in str(folder) else diffusers.StableDiffusionPipeline
    pipe = cls.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ours(folder):
    if "sdxl" in str(folder):
        blocks = StableDiffusionXLAutoBlocks()
        blocks.sub_blocks.insert("ip_adapter", StableDiffusionXLAutoIPAdapterStep(), 0)
    else:
        from diffblocks.blocks import SequentialPipelineBlocks

        blocks = SequentialPipelineBlocks.from_blocks_dict(SD_AUTO_BLOCKS)
        blocks.sub_blocks.insert("ip_adapter", StableDiffusionAutoIPAdapterStep(), 0)
    pipe = blocks.init_pipeline(str(folder))
    pipe.load_components(torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ref_image(pipe, **kwargs):
    return seeded_images(pipe, False, **{**KW, **kwargs})


def our_image(pipe, **kwargs):
    return seeded_images(pipe, True, **{**KW, **kwargs})


close = assert_close


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_same_image_as_reference_with_cfg_scale_and_unload(folders, family):
    folder = folders[family]
    ref, ours = _ref(folder), _ours(folder)
    base = our_image(ours)
    version = adapter_version(ours.unet)
    ref.load_ip_adapter(str(folder / "ip"), subfolder=None, weight_name="ip-adapter.safetensors")
    ours.loader.load_ip_adapter(str(folder / "ip"), subfolder=None, weight_name="ip-adapter.safetensors")
    assert adapter_version(ours.unet) > version
    image = test_image(48, seed=3)
    expected = ref_image(ref, ip_adapter_image=image)
    assert np.abs(expected - base).max() > 0.02  # the adapter changes the image: a dropped layer would show
    close(our_image(ours, ip_adapter_image=image), expected)

    for pipe in (ref, ours):  # per-block scales: the reference's dict form
        pipe.set_ip_adapter_scale({"up": {"block_0" if family == "sdxl" else "block_1": [0.0, 1.0, 0.5]},
                                   "mid": 0.7})
    close(our_image(ours, ip_adapter_image=image), ref_image(ref, ip_adapter_image=image))
    ref.set_ip_adapter_scale(0.6)
    ours.set_ip_adapter_scale(0.6)
    close(our_image(ours, ip_adapter_image=image), ref_image(ref, ip_adapter_image=image))
    ours.loader.set_ip_adapter_scale(0.0)
    close(our_image(ours, ip_adapter_image=image), base)  # scale 0 equals no adapter

    ours.unload_ip_adapter()
    assert np.array_equal(our_image(ours), base)  # the exact base image
    assert not any("ip" in k for k in ours.unet.state_dict())


def test_bin_file_embeds_input_two_adapters_and_no_cfg(folders):
    folder = folders["sd15"]
    ref, ours = _ref(folder), _ours(folder)
    image, image_2 = test_image(40, seed=4), test_image(40, seed=5)
    for pipe in (ref, ours):
        pipe.load_ip_adapter(str(folder / "ip"), subfolder=None, weight_name=["ip-adapter.bin", "second.safetensors"])
        pipe.set_ip_adapter_scale([0.8, 0.5])
    expected = ref_image(ref, ip_adapter_image=[image, image_2])
    close(our_image(ours, ip_adapter_image=[image, image_2]), expected)
    # precomputed embeddings ([negative, positive] under CFG, as the reference takes them)
    embeds = ref.prepare_ip_adapter_image_embeds([image, image_2], None, torch.device("cpu"), 1, True)
    close(our_image(ours, ip_adapter_image_embeds=embeds), expected)
    # guidance off: no negative pass
    close(our_image(ours, ip_adapter_image=[image, image_2], guidance_scale=1.0),
          ref_image(ref, ip_adapter_image=[image, image_2], guidance_scale=1.0))


def test_bad_input_gives_clear_errors_and_pipeline_keeps_working(folders, tmp_path):
    folder = folders["sd15"]
    ours = _ours(folder)
    base = our_image(ours)
    image = test_image(40, seed=4)
    with pytest.raises(Exception, match="no IP-Adapter is loaded"):
        our_image(ours, ip_adapter_image=image)
    bad = save_ip_adapter({"image_proj": {"proj.weight": torch.zeros(4, 4)}}, tmp_path / "bad.bin")
    with pytest.raises(AdapterFileError, match="image_proj.*ip_adapter"):
        ours.load_ip_adapter(str(bad))
    from safetensors.torch import save_file

    save_file({"proj.weight": torch.zeros(4, 4)}, str(tmp_path / "flat.safetensors"))
    with pytest.raises(AdapterFileError, match="not an IP-Adapter file"):
        ours.load_ip_adapter(str(tmp_path / "flat.safetensors"))
    # an SDXL adapter on the SD 1.5 UNet: shapes name the layer, nothing changes
    with pytest.raises(AdapterFileError, match="another model family"):
        ours.load_ip_adapter(str(folders["sdxl"] / "ip" / "ip-adapter.safetensors"))
    assert np.array_equal(our_image(ours), base)

    ours.load_ip_adapter(str(folder / "ip" / "ip-adapter.safetensors"))
    with pytest.raises(ValueError, match="image_embeds"):  # adapter loaded but no image given
        our_image(ours)
    with pytest.raises(ValueError, match="unknown keys"):
        ours.set_ip_adapter_scale({"left": 1.0})
    ours.update_components(image_encoder=None)
    with pytest.raises(Exception, match="image_encoder"):
        our_image(ours, ip_adapter_image=image)
    ours.unload_ip_adapter()
    assert np.array_equal(our_image(ours), base)
