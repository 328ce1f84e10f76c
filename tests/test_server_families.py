"""The default ComfyUI workflow on SDXL and Flux checkpoints gives the Python preset's image (Flux as ComfyUI's Flux
workflows run it: FluxGuidance on the positive conditioning, cfg 1, euler + simple)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from fixtures_flux import build_flux
from fixtures_sd import build_sdxl

from diffblocks import ModularPipeline
from diffblocks.components.schedulers import EulerDiscreteScheduler
from diffblocks.server import NodeRegistry, PromptEngine

WORKFLOW = Path(__file__).parent / "data" / "comfyui_default_workflow_api.json"
SIZE, STEPS, SEED = 32, 2, 3


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("server-families")
    build_sdxl(root / "models")
    build_flux(root / "models")
    return PromptEngine(models_dir=root / "models", input_dir=root / "input", output_dir=root / "output",
                        registry=NodeRegistry(include_blocks=False))


def workflow(ckpt: str) -> dict:
    prompt = json.loads(WORKFLOW.read_text())
    prompt["4"]["inputs"]["ckpt_name"] = ckpt
    prompt["5"]["inputs"].update(width=SIZE, height=SIZE)
    prompt["3"]["inputs"].update(steps=STEPS, seed=SEED)
    return prompt


def execute(engine: PromptEngine, prompt: dict) -> np.ndarray:
    result = engine.validate(prompt)
    assert result.ok, result.node_errors
    entry = engine.execute("f", prompt, result.outputs)["9"]["images"][0]
    return np.asarray(PIL.Image.open(engine.paths.output_dir / entry["subfolder"] / entry["filename"]))


def preset(folder: Path, **kwargs) -> ModularPipeline:
    pipe = ModularPipeline.from_pretrained(str(folder))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sdxl_default_workflow_matches_preset(engine):
    prompt = workflow("sdxl")
    got = execute(engine, prompt)
    pipe = preset(engine.paths.models_dir / "sdxl")
    pipe.update_components(scheduler=EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                        timestep_spacing="linspace"))
    expected = pipe(prompt=prompt["6"]["inputs"]["text"], negative_prompt=prompt["7"]["inputs"]["text"],
                    generator=torch.Generator().manual_seed(SEED), num_inference_steps=STEPS, guidance_scale=8.0,
                    height=SIZE, width=SIZE, output="images")[0]
    np.testing.assert_array_equal(got, np.asarray(expected))


def test_flux_workflow_with_flux_guidance_matches_preset(engine):
    prompt = workflow("flux")
    prompt["3"]["inputs"].update(cfg=1.0, sampler_name="euler", scheduler="simple")
    prompt["10"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["6", 0], "guidance": 2.5}}
    prompt["3"]["inputs"]["positive"] = ["10", 0]
    got = execute(engine, prompt)
    pipe = preset(engine.paths.models_dir / "flux")
    expected = pipe(prompt=prompt["6"]["inputs"]["text"], generator=torch.Generator().manual_seed(SEED),
                    num_inference_steps=STEPS, guidance_scale=2.5, height=SIZE, width=SIZE, output="images")[0]
    np.testing.assert_array_equal(got, np.asarray(expected))
    # an SD sampler on a flow-matching model is a clear error naming the node
    from diffblocks.server import NodeExecutionError

    prompt["3"]["inputs"].update(sampler_name="dpmpp_2m", scheduler="karras")
    with pytest.raises(NodeExecutionError, match="flow-matching") as info:
        engine.execute("f2", prompt, ["9"])
    assert info.value.node_id == "3"
