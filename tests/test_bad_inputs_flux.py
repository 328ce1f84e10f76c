"""Bad input corpus on the Flux preset: the same refusals as SD (a BlockInputError naming the block, the input and
the expectation) and the pipeline stays usable: the good call after each returns the same image as before."""

from __future__ import annotations

import math

import pytest
import torch
from fixtures_flux import MAX_SEQUENCE_LENGTH, build_flux
from fixtures_sd import test_image

from diffblocks import BlockInputError, ModularPipeline

NAN = float("nan")
GOOD = dict(prompt="a red cat", num_inference_steps=2, height=32, width=32, max_sequence_length=MAX_SEQUENCE_LENGTH,
            output_type="pt")
IMAGE, MASK = test_image(32), test_image(32, mode="L")

# (case id, kwargs, input named, words of the expectation)
CASES = [
    ("height-0", dict(height=0), "height", "positive"),
    ("width-negative", dict(width=-16), "width", "positive"),
    ("num_images-0", dict(num_images_per_prompt=0), "num_images_per_prompt", ">= 1"),
    ("prompt-empty-list", dict(prompt=[]), "prompt", "non-empty list"),
    ("generator-string", dict(generator="seed"), "generator", "torch.Generator"),
    ("guidance-nan", dict(guidance_scale=NAN), "guidance_scale", "finite"),
    ("guidance-inf", dict(guidance_scale=math.inf), "guidance_scale", "finite"),
    ("strength-nan", dict(image=IMAGE, strength=NAN), "strength", "must be in [0, 1]"),
    ("image-nan", dict(image=torch.full((1, 3, 32, 32), NAN)), "image", "finite"),
    ("image-5-channels", dict(image=torch.rand(1, 5, 32, 32)), "image", "5 channels"),
    ("mask-nan", dict(image=IMAGE, mask_image=torch.full((1, 1, 32, 32), NAN)), "mask_image", "finite"),
]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    pipe = ModularPipeline.from_pretrained(build_flux(tmp_path_factory.mktemp("bad-inputs-flux")))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _good(pipe) -> torch.Tensor:
    return pipe(**GOOD, generator=torch.Generator().manual_seed(0), output="images")


@pytest.fixture(scope="module")
def good_image(pipe):
    return _good(pipe)


@pytest.mark.parametrize("case, kwargs, name, expectation", CASES, ids=[c[0] for c in CASES])
def test_bad_input_refused_and_flux_pipeline_unharmed(pipe, good_image, case, kwargs, name, expectation):
    kwargs = {**GOOD, **kwargs}
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    with pytest.raises(BlockInputError) as info:
        pipe(**kwargs, output="images")
    message = str(info.value)
    assert info.value.input_name == name and repr(name) in message and expectation in message, message
    assert info.value.block and info.value.block in message, message
    assert torch.equal(_good(pipe), good_image), "the pipeline changed after a refused call"
