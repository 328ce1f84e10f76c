"""docs/differential_diffusion.md runs as written on the tiny SDXL folder, and its pipeline does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_sd import build_sdxl, test_image
from PIL import Image

from diffblocks import ModularPipeline

DOC = Path(__file__).resolve().parents[1] / "docs" / "differential_diffusion.md"


def _code_blocks() -> list[str]:
    text = DOC.read_text()
    blocks = []
    for match in re.finditer(r"(<!-- not run in tests -->\n)?```py\n(.*?)```", text, re.S):
        if not match.group(1):
            blocks.append(match.group(2))
    return blocks


@pytest.fixture(scope="module")
def doc_namespace(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffdiff")
    repo = build_sdxl(root)
    ns = {"repo": str(repo), "image": test_image(32), "diffdiff_map": Image.new("L", (32, 32), 0),
          "__name__": "diffdiff_doc"}
    code = "\n".join(_code_blocks()).replace("num_inference_steps=25", "num_inference_steps=4")
    code = code.replace('images[0].save("diffdiff.png")', 'images[0].save(str(out_dir / "diffdiff.png"))')
    ns["out_dir"] = root
    exec(compile(code, str(DOC), "exec"), ns)
    ns["dd_pipeline"].set_progress_bar_config(disable=True)
    base = ModularPipeline.from_pretrained(str(repo))  # the stock auto preset, for comparison
    base.load_components()
    base.set_progress_bar_config(disable=True)
    ns["base"] = base
    return ns


def test_doc_runs_and_saves(doc_namespace):
    assert (doc_namespace["out_dir"] / "diffdiff.png").is_file()
    names = list(doc_namespace["dd_blocks"].sub_blocks)
    assert names == ["text_encoder", "input", "vae_encoder", "set_timesteps", "prepare_latents", "prepare_add_cond",
                     "denoise", "decode"]


def _run(pipe, **kw):
    return pipe(prompt="a green pear", image=test_image(32), num_inference_steps=4, output_type="latent",
                generator=torch.Generator().manual_seed(0), output="images", **kw)


def test_black_map_equals_img2img_at_full_strength(doc_namespace):
    # a black map never resets anything: exactly image-to-image with strength 1 (itself reference-tested)
    dd = _run(doc_namespace["dd_pipeline"], diffdiff_map=Image.new("L", (32, 32), 0))
    img2img = _run(doc_namespace["base"], strength=1.0)
    assert (dd - img2img).abs().max() <= 1e-5 * img2img.abs().max()  # float rounding only


def test_white_map_keeps_the_image(doc_namespace):
    pipe = doc_namespace["dd_pipeline"]
    state = pipe(prompt="a green pear", image=test_image(32), num_inference_steps=4, output_type="latent",
                 generator=torch.Generator().manual_seed(0), diffdiff_map=Image.new("L", (32, 32), 255))
    image_latents = state.values["image_latents"]
    white = state.values["images"]
    black = _run(pipe, diffdiff_map=Image.new("L", (32, 32), 0))
    assert (white - image_latents).abs().mean() < 0.25 * (black - image_latents).abs().mean()
    # half and half: the white half stays near the image, the black half does not
    half = np.zeros((32, 32), dtype=np.uint8)
    half[:, :16] = 255
    mixed = _run(pipe, diffdiff_map=Image.fromarray(half, "L"))
    left = (mixed - image_latents)[..., :8].abs().mean()
    right = (mixed - image_latents)[..., 8:].abs().mean()
    assert left < 0.5 * right
