"""Bad input corpus: each case gets a clear error naming the block, the input and the expectation (or a documented
behaviour), and the pipeline stays usable: the good call after it returns the same image as before it."""

from __future__ import annotations

import json
import math
import shutil
import struct
import time

import numpy as np
import pytest
import torch
from fixtures_sd import build_sd15, test_image

import diffblocks
from diffblocks import (
    BlockInputError,
    CheckpointError,
    ComponentLoadError,
    ComponentsManager,
    ModularPipeline,
)

GOOD = dict(prompt="a red cat", num_inference_steps=1, height=32, width=32, guidance_scale=1.0, output_type="pt")
BASE = dict(prompt="a cat", num_inference_steps=1, height=32, width=32, output_type="pt")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_sd15(tmp_path_factory.mktemp("bad-inputs"))


@pytest.fixture(scope="module")
def pipe(folder):
    pipe = ModularPipeline.from_pretrained(folder)
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _good(pipe) -> torch.Tensor:
    return pipe(**GOOD, generator=torch.Generator().manual_seed(0), output="images")


@pytest.fixture(scope="module")
def good_image(pipe):
    return _good(pipe)


def _refused(pipe, good_image, error: type, *needles: str, **kwargs) -> BaseException:
    kwargs = {**BASE, **kwargs}
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    with pytest.raises(error) as info:
        pipe(**kwargs, output="images")
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert torch.equal(_good(pipe), good_image), "the pipeline changed after a refused call"
    return info.value


IMAGE, MASK = test_image(32), test_image(32, mode="L")
NAN = float("nan")

# (case id, kwargs, block named in the message, input named, words of the expectation)
CASES = [
    ("height-0", dict(height=0), "PrepareLatentsStep", "height", "positive"),
    ("height-negative", dict(height=-8), "PrepareLatentsStep", "height", "positive"),
    ("width-negative", dict(width=-32), "PrepareLatentsStep", "width", "positive"),
    ("num_images-0", dict(num_images_per_prompt=0), "InputStep", "num_images_per_prompt", ">= 1"),
    ("prompt-empty-list", dict(prompt=[]), "TextEncoderStep", "prompt", "non-empty list"),
    ("generator-string", dict(generator="seed"), "InputStep", "generator", "torch.Generator"),
    ("guidance-nan", dict(guidance_scale=NAN), "TextEncoderStep", "guidance_scale", "finite"),
    ("guidance-inf", dict(guidance_scale=math.inf), "TextEncoderStep", "guidance_scale", "finite"),
    ("rescale-nan", dict(guidance_rescale=NAN), "DenoiseStep", "guidance_rescale", "finite"),
    ("strength-nan", dict(image=IMAGE, strength=NAN), "SetTimestepsStep", "strength", "[0.0, 1.0]"),
    ("image-nan", dict(image=torch.full((1, 3, 32, 32), NAN)), "VaeEncoderStep", "image", "finite"),
    ("mask-nan", dict(image=IMAGE, mask_image=torch.full((1, 1, 32, 32), NAN)), "VaeEncoderStep", "mask_image",
     "finite"),
    ("latents-nan", dict(latents=torch.full((1, 4, 16, 16), NAN)), "PrepareLatentsStep", "latents", "finite"),
    ("image-1-channel", dict(image=torch.rand(1, 1, 32, 32)), "VaeEncoderStep", "image", "1 channels"),
    ("image-5-channels", dict(image=torch.rand(1, 5, 32, 32)), "VaeEncoderStep", "image", "5 channels"),
    ("image-array-2-channels", dict(image=np.random.rand(32, 32, 2).astype("float32")), "VaeEncoderStep", "image",
     "expected 3 (RGB pixels) or 4 (latents)"),
]


@pytest.mark.parametrize("case, kwargs, block, name, expectation", CASES, ids=[c[0] for c in CASES])
def test_bad_input_refused_and_pipeline_unharmed(pipe, good_image, case, kwargs, block, name, expectation):
    error = _refused(pipe, good_image, BlockInputError, block, repr(name), expectation, **kwargs)
    assert error.input_name == name
    assert block in error.block


def test_huge_size_fails_fast_with_estimate_and_limit_can_be_raised(pipe, good_image, monkeypatch):
    from diffblocks.runtime import limits

    monkeypatch.setattr(limits, "_limit", limits._UNSET)  # the default (restored after the test)
    start = time.perf_counter()
    with pytest.raises(BlockInputError) as info:
        pipe(**dict(BASE, height=10**6, width=10**6), generator=torch.Generator().manual_seed(0), output="images")
    assert time.perf_counter() - start < 5  # refused before any allocation or model call
    message = str(info.value)
    assert "PrepareLatentsStep" in message and "estimated" in message and "TiB" in message
    assert "diffblocks.set_size_limit" in message and info.value.input_name == "height"
    assert torch.equal(_good(pipe), good_image)
    assert diffblocks.get_size_limit() >= 2**30  # default: this machine's memory
    diffblocks.set_size_limit(10**5)  # a limit the user sets: 32x32 needs more by the estimate
    with pytest.raises(BlockInputError, match="above the size limit of 97.7 KiB"):
        pipe(**GOOD, generator=torch.Generator().manual_seed(0), output="images")
    diffblocks.set_size_limit(None)  # lifted
    assert torch.equal(_good(pipe), good_image)
    with pytest.raises(ValueError, match="positive number of bytes"):
        diffblocks.set_size_limit(-1)


def test_pil_rgba_and_l_are_images(pipe, good_image):
    """A PIL RGBA (or grayscale) picture is converted to RGB pixels, never taken as 4-channel latents."""
    kwargs = dict(BASE, strength=0.8, num_inference_steps=2)
    rgb = pipe(**kwargs, image=IMAGE, generator=torch.Generator().manual_seed(0), output="images")
    rgba = pipe(**kwargs, image=IMAGE.convert("RGBA"), generator=torch.Generator().manual_seed(0), output="images")
    assert rgba.shape == rgb.shape == (1, 3, 32, 32)
    assert torch.equal(rgba, rgb)
    gray = IMAGE.convert("L")
    got = pipe(**kwargs, image=gray, generator=torch.Generator().manual_seed(0), output="images")
    want = pipe(**kwargs, image=gray.convert("RGB"), generator=torch.Generator().manual_seed(0), output="images")
    assert torch.equal(got, want)
    assert torch.equal(_good(pipe), good_image)


def test_torch_dtype_string(folder):
    pipe = ModularPipeline.from_pretrained(folder)
    pipe.load_components(["vae"], torch_dtype="float16")
    assert pipe.vae.dtype == torch.float16
    pipe.load_components(["unet"], torch_dtype="torch.bfloat16")
    assert pipe.unet.dtype == torch.bfloat16
    with pytest.raises(ComponentLoadError, match=r"text_encoder.*torch_dtype.*'float16'.*got 'float17'"):
        pipe.load_components(["text_encoder"], torch_dtype="float17")


def test_unknown_scheduler_class_warns_naming_the_substitute(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    index = json.loads((copy / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "LMSDiscreteScheduler"]
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.warns(UserWarning, match=r"'scheduler'.*LMSDiscreteScheduler.*EulerDiscreteScheduler INSTEAD"):
        pipe = ModularPipeline.from_pretrained(copy)
    assert pipe.get_component_spec("scheduler").type_hint.__name__ == "EulerDiscreteScheduler"


def test_components_manager_refuses_none():
    with pytest.raises(ValueError, match=r"add\('unet', None\).*no component"):
        ComponentsManager().add("unet", None)


# -- crafted safetensors files ----------------------------------------------------------------------------------
def _safetensors(path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("kind", ["huge-shape", "overlapping", "out-of-range", "truncated"])
def test_crafted_safetensors_refused(tmp_path, kind):
    from diffblocks.components.modeling import read_safetensors

    path = tmp_path / "w.safetensors"
    if kind == "huge-shape":  # 2**62 floats claimed in 16 bytes: must fail before allocating
        _safetensors(path, {"a": {"dtype": "F32", "shape": [2**31, 2**31], "data_offsets": [0, 16]}}, bytes(16))
    elif kind == "overlapping":
        _safetensors(path, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                            "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, bytes(24))
    elif kind == "out-of-range":
        _safetensors(path, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [64, 80]}}, bytes(16))
    else:
        _safetensors(path, {"a": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}}, bytes(16))
    with pytest.raises(CheckpointError, match="w.safetensors"):
        read_safetensors(path)
