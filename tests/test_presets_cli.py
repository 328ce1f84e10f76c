"""`diffblocks generate` on a standard SD folder (same image as the Python API) and `diffblocks demo`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_sd import build_sd15, test_image
from PIL import Image

from diffblocks import ModularPipeline
from diffblocks.cli import main


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return build_sd15(tmp_path_factory.mktemp("cli-sd"))


def test_generate_matches_python_api(sd15, tmp_path):
    out = tmp_path / "out.png"
    assert main(["generate", "--model", str(sd15), "--prompt", "a red cat", "--steps", "3", "--seed", "7",
                 "--guidance", "4.0", "--out", str(out), "--quiet"]) == 0
    pipe = ModularPipeline.from_pretrained(str(sd15))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt="a red cat", num_inference_steps=3, guidance_scale=4.0,
                    generator=torch.Generator().manual_seed(7), output="images")[0]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))


def test_generate_inpaint_and_mask_needs_image(sd15, tmp_path):
    image, mask = tmp_path / "in.png", tmp_path / "mask.png"
    test_image(32).save(image)
    test_image(32, mode="L").save(mask)
    out = tmp_path / "inpaint.png"
    assert main(["generate", "--model", str(sd15), "--prompt", "a cat", "--image", str(image), "--mask", str(mask),
                 "--steps", "2", "--out", str(out), "--quiet"]) == 0
    assert Image.open(out).size == (32, 32)
    with pytest.raises(SystemExit, match="--mask needs --image"):
        main(["generate", "--model", str(sd15), "--prompt", "a", "--mask", str(mask), "--out", str(out)])
