"""Placement options through ModularPipeline: from_pretrained defaults and load_components(device=...)."""

from __future__ import annotations

import pytest
import torch
from fixtures_sd import build_sd15

from diffblocks import ComponentLoadError, ModularPipeline


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return build_sd15(tmp_path_factory.mktemp("sd15-loading"))


def _image(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt="a red square", num_inference_steps=2, height=32, width=32,
                generator=torch.Generator().manual_seed(0), output="images", output_type="pt")


def test_load_components_places_and_casts_models_only(sd15):
    pipe = ModularPipeline.from_pretrained(str(sd15))
    pipe.load_components(device="cpu", torch_dtype={"unet": torch.bfloat16, "default": torch.float32},
                         low_cpu_mem_usage=True)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    assert pipe.text_encoder.dtype == torch.float32 and pipe.unet.device == torch.device("cpu")
    assert pipe.tokenizer is not None and pipe.scheduler is not None  # no weights: placement options ignored

    meta = ModularPipeline.from_pretrained(str(sd15))
    meta.load_components(["unet", "vae"], device="meta")
    assert all(p.is_meta for p in meta.unet.parameters()) and all(p.is_meta for p in meta.vae.parameters())


def test_from_pretrained_options_are_load_defaults(sd15):
    plain = ModularPipeline.from_pretrained(str(sd15))
    plain.load_components()
    mapped = ModularPipeline.from_pretrained(str(sd15), device_map={"unet": "auto", "default": None})
    mapped.load_components()
    assert set(mapped.unet.hf_device_map.values()) == {"cpu"} and not hasattr(mapped.vae, "hf_device_map")
    assert torch.equal(_image(plain), _image(mapped))
    half = ModularPipeline.from_pretrained(str(sd15), torch_dtype=torch.float16)
    half.load_components(["unet"])
    half.load_components(["vae"], torch_dtype=torch.float32)  # a call's own value wins
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32
    with pytest.raises(TypeError, match=r"unknown arguments \['devise'\].*\['torch_dtype', 'device'"):
        ModularPipeline.from_pretrained(str(sd15), devise="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_bad_device_names_each_failing_model(sd15):
    pipe = ModularPipeline.from_pretrained(str(sd15))
    with pytest.raises(ComponentLoadError, match=r"unet: ValueError: UNet2DConditionModel: device 'cuda:0' is not "
                                                 r"available on this machine"):
        pipe.load_components(["unet", "tokenizer"], device="cuda:0")
    assert pipe.tokenizer is not None and pipe.unet is None
