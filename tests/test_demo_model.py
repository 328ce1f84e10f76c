"""The bundled trained demo model: standard format (the reference loads it and draws the same image), it follows
its prompts (a model-free classifier scores a fixed subset), and the demo / generate commands use it offline."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from diffblocks import ModularPipeline, demo_model_path
from diffblocks.assets import DEMO_GUIDANCE_SCALE, DEMO_PROMPT, DEMO_STEPS
from diffblocks.cli import main
from diffblocks.demo_data import COLORS, SHAPES, caption, classify_image, parse_caption, score

# one prompt per (color, shape) pair with a background chosen by rotation: every color is an object and a
# background, every shape appears 6 times
_SUBSET = [caption(color, shape, [b for b in COLORS if b != color][(i * 3 + j) % 5])
           for i, color in enumerate(COLORS) for j, shape in enumerate(SHAPES)]


@pytest.fixture(scope="module")
def pipe():
    pipe = ModularPipeline.from_pretrained(demo_model_path())
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shipped_as_package_data_under_20_mb_with_its_recipe_recorded():
    folder = demo_model_path()
    index = json.loads((folder / "model_index.json").read_text())
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    weights = list(folder.rglob("*.safetensors"))
    assert len(weights) == 3 and not list(folder.rglob("*.bin"))
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 20 * 2**20
    readme = (folder / "README.md").read_text()
    for needle in ("seed", "steps", "loss", "wall time", "make demo-model"):
        assert needle in readme, needle


def test_reference_loads_the_folder_and_draws_the_same_image(pipe):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.StableDiffusionPipeline.from_pretrained(str(demo_model_path()), safety_checker=None,
                                                            requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a green triangle on a white background", num_inference_steps=10,
                  guidance_scale=DEMO_GUIDANCE_SCALE, height=64, width=64, output_type="np")
    expected = ref(**kwargs, generator=torch.Generator().manual_seed(5)).images[0]
    ours = pipe(**kwargs, generator=torch.Generator().manual_seed(5), output="images")[0]
    assert np.abs(np.asarray(ours, dtype=np.float64) - expected).max() < 1e-4


def test_follows_prompts_on_a_fixed_subset(pipe):
    """Quality floor: >= 80% object color and >= 60% shape accuracy (bench/prompt_adherence.py measures all 90
    prompts x 2 seeds; its numbers are in bench/RESULTS.md)."""
    assert len(_SUBSET) == 18 and {parse_caption(p)[1] for p in _SUBSET} == set(SHAPES)
    images = pipe(prompt=_SUBSET, num_inference_steps=DEMO_STEPS, guidance_scale=DEMO_GUIDANCE_SCALE,
                  height=64, width=64, generator=[torch.Generator().manual_seed(100 + i) for i in range(len(_SUBSET))],
                  output="images")
    result = score(zip(images, _SUBSET))
    assert result["color"] >= 0.8 and result["background"] >= 0.8, result
    assert result["shape"] >= 0.6, result


def test_demo_command_defaults_and_options(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quiet"]) == 0
    assert "bundled demo model" in capsys.readouterr().out
    got = classify_image(Image.open(tmp_path / "demo.png"))
    color, _, background = parse_caption(DEMO_PROMPT)
    assert (got.color, got.background) == (color, background), got

    out = tmp_path / "x.png"
    prompt = "a red circle on a black background"
    assert main(["demo", "--prompt", prompt, "--seed", "3", "--steps", "25", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"Saved .*x\.png.*seed 3, 25 steps", text), text
    got = classify_image(Image.open(out))
    assert (got.color, got.background) == ("red", "black"), got

    assert main(["demo", "--prompt", "a watercolor fox", "--steps", "2", "--out", str(out), "--quiet"]) == 0
    assert "only learned prompts like" in capsys.readouterr().out


def test_generate_without_model_uses_the_bundled_model(tmp_path):
    out = tmp_path / "g.png"
    assert main(["generate", "--prompt", "a yellow square on a black background", "--steps", "20",
                 "--guidance", str(DEMO_GUIDANCE_SCALE), "--seed", "1", "--out", str(out), "--quiet"]) == 0
    got = classify_image(Image.open(out))
    assert (got.color, got.background) == ("yellow", "black"), got
    assert "demo_model" in Image.open(out).text["parameters"] + json.dumps(Image.open(out).text)
