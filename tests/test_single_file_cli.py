"""`diffblocks convert`, `diffblocks generate --model FILE.safetensors`, and save_pretrained after from_single_file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fixtures_sd import build_sd15
from single_file_fixtures import write_sd_file

from diffblocks import ModularPipeline
from diffblocks.cli import main

diffusers = pytest.importorskip("diffusers")
KW = {"prompt": "a red cat", "num_inference_steps": 2, "output_type": "np"}


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    root = tmp_path_factory.mktemp("single-file-cli")
    folder = build_sd15(root)
    return folder, write_sd_file(folder, root / "sd15.safetensors")


def _ours(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe(**KW, generator=torch.Generator().manual_seed(0), output="images")


def test_convert_writes_a_standard_folder_the_reference_loads(sd15, tmp_path, capsys):
    folder, file = sd15
    out = tmp_path / "converted"
    assert main(["convert", str(file), str(out), "--config", str(folder)]) == 0
    assert "Wrote" in capsys.readouterr().out
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["unet"] == ["diffusers", "UNet2DConditionModel"]
    ref = diffusers.StableDiffusionPipeline.from_pretrained(str(out))
    ref.set_progress_bar_config(disable=True)
    expected = ref(**KW, generator=torch.Generator().manual_seed(0)).images
    ours = ModularPipeline.from_pretrained(out)
    ours.load_components()
    got = _ours(ours)
    assert expected.std() > 0.05 and np.abs(got - expected).max() <= 1e-4
    # the same image as the single file itself
    assert np.abs(_ours(ModularPipeline.from_single_file(file, config=folder)) - got).max() <= 1e-6


def test_save_pretrained_after_from_single_file_loads_back(sd15, tmp_path):
    folder, file = sd15
    pipe = ModularPipeline.from_single_file(file, config=folder)
    pipe.save_pretrained(tmp_path / "saved")
    again = ModularPipeline.from_pretrained(tmp_path / "saved")
    again.load_components()
    assert np.abs(_ours(again) - _ours(pipe)).max() <= 1e-6


def test_generate_with_a_single_file(sd15, tmp_path):
    folder, file = sd15
    out = tmp_path / "image.png"
    assert main(["generate", "--model", str(file), "--config", str(folder), "--prompt", "a cat", "--steps", "2",
                 "--out", str(out), "--quiet"]) == 0
    from PIL import Image

    assert Image.open(out).size == (32, 32)


def test_convert_lone_controlnet_file(tmp_path):
    from model_fixtures import CONTROLNET, save_reference
    from single_file_fixtures import write_controlnet_file

    save_reference("ControlNetModel", CONTROLNET, tmp_path / "cn", seed=3)
    file = write_controlnet_file(tmp_path / "cn", tmp_path / "cn.safetensors")
    assert main(["convert", str(file), str(tmp_path / "out"), "--config", str(tmp_path / "cn")]) == 0
    expected = diffusers.ControlNetModel.from_pretrained(str(tmp_path / "cn")).state_dict()
    got = diffusers.ControlNetModel.from_pretrained(str(tmp_path / "out")).state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
