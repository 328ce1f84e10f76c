"""The model examples of README.md and docs/quickstart.md run as written on a CPU-only machine: each Hub repo id
is swapped for a tiny offline folder of the same family, step counts and sizes are cut, and nothing else changes
(so every variable an example uses must be defined in the examples, and the CPU branch must work)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fixtures_flux import MAX_SEQUENCE_LENGTH, build_flux
from fixtures_sd import build_controlnet, build_sd15, build_sdxl, test_image

ROOT = Path(__file__).resolve().parents[1]


def code_blocks(doc: str) -> list[str]:
    return re.findall(r"```(?:py|python)\n(.*?)```", (ROOT / doc).read_text(), flags=re.S)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("quickstart")
    return {"stabilityai/stable-diffusion-xl-base-1.0": build_sdxl(root),
            "stable-diffusion-v1-5/stable-diffusion-v1-5": build_sd15(root),
            "lllyasviel/sd-controlnet-canny": build_controlnet(root),
            "black-forest-labs/FLUX.1-dev": build_flux(root)}


def run_examples(blocks: list[str], folders: dict, cwd: Path, monkeypatch) -> dict:
    monkeypatch.chdir(cwd)
    test_image(32, seed=3).save(cwd / "bird.png")
    namespace: dict = {}
    for code in blocks:
        for repo, folder in folders.items():
            code = code.replace(f'"{repo}"', repr(str(folder)))
        code = re.sub(r"num_inference_steps=\d+", "num_inference_steps=2", code)
        # calls that take the default step count or size get small ones
        code = code.replace("guidance_scale=6.0,", "guidance_scale=6.0, num_inference_steps=2,")
        code = code.replace("controlnet_conditioning_scale=0.8,", "controlnet_conditioning_scale=0.8, num_inference_steps=2,")
        code = code.replace("guidance_scale=3.5,", "guidance_scale=3.5, height=32, width=32,")
        code = code.replace("max_sequence_length=512", f"max_sequence_length={MAX_SEQUENCE_LENGTH}")
        exec(compile(code, "<doc example>", "exec"), namespace)  # noqa: S102 (our own documentation)
    return namespace


def test_demo_model_examples_run_unchanged(tmp_path, monkeypatch):
    """README and quickstart examples on the bundled demo model run exactly as written (offline) and draw
    what they ask for."""
    from PIL import Image

    from diffblocks.demo_data import classify_image

    blocks = [b for doc in ("README.md", "docs/quickstart.md") for b in code_blocks(doc) if "demo_model_path" in b]
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, "<doc example>", "exec"), {})  # noqa: S102 (our own documentation)
    got = classify_image(Image.open(tmp_path / "triangle.png"))
    assert (got.color, got.background) == ("yellow", "blue"), got
    assert (tmp_path / "circles.png").exists()


def test_readme_model_example_runs_on_cpu(folders, tmp_path, monkeypatch):
    blocks = [b for b in code_blocks("README.md") if "from_pretrained" in b and "demo_model_path" not in b]
    assert len(blocks) == 1
    ns = run_examples(blocks, folders, tmp_path, monkeypatch)
    assert ns["device"] == "cpu" or ns["device"] == "cuda"
    assert (tmp_path / "astronaut.png").exists()


def test_quickstart_examples_run_on_cpu_and_define_every_variable(folders, tmp_path, monkeypatch):
    blocks = [b for b in code_blocks("docs/quickstart.md") if "demo_model_path" not in b]
    assert any("control_image=edges" in b for b in blocks) and any("FLUX" in b for b in blocks)
    ns = run_examples(blocks, folders, tmp_path, monkeypatch)
    assert (tmp_path / "astronaut.png").exists() and (tmp_path / "flux.png").exists()
    assert len(ns["images"]) == 1 and "text2image" in ns["blocks"].available_workflows
