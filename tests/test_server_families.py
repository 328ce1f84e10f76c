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


def test_flux_separate_files_unet_dualclip_vae_loaders(engine):
    """ComfyUI's Flux layout: transformer, text encoders (with their tokenizers) and VAE as separate models."""
    import shutil

    from diffblocks.components.schedulers import FlowMatchEulerDiscreteScheduler
    from diffblocks.components.single_file.load import shipped_config

    models, flux = engine.paths.models_dir, engine.paths.models_dir / "flux"
    shutil.copytree(flux / "transformer", models / "diffusion_models" / "flux-transformer")
    for encoder, tokenizer, name in (("text_encoder", "tokenizer", "clip_l"), ("text_encoder_2", "tokenizer_2", "t5")):
        shutil.copytree(flux / encoder, models / "text_encoders" / name)
        shutil.copytree(flux / tokenizer, models / "text_encoders" / name, dirs_exist_ok=True)
    shutil.copytree(flux / "vae", models / "vae" / "flux-vae")
    prompt = workflow("flux")
    del prompt["4"]
    prompt["4a"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "flux-transformer", "weight_dtype": "default"}}
    prompt["4b"] = {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5", "clip_name2": "clip_l",
                                                               "type": "flux"}}
    prompt["4c"] = {"class_type": "VAELoader", "inputs": {"vae_name": "flux-vae"}}
    prompt["10"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["6", 0], "guidance": 2.5}}
    prompt["3"]["inputs"].update(model=["4a", 0], positive=["10", 0], cfg=1.0, scheduler="simple")
    prompt["6"]["inputs"]["clip"] = prompt["7"]["inputs"]["clip"] = ["4b", 0]
    prompt["8"]["inputs"]["vae"] = ["4c", 0]
    got = execute(engine, prompt)
    pipe = preset(flux)
    # UNETLoader gives the transformer FLUX.1-dev's own scheduler config; without its VAE, the sampler assumes the
    # real Flux VAE's factor 8 (as ComfyUI does): a 32 px latent is a 4x4 grid, which the tiny VAE (factor 2)
    # decodes to 8x8 pixels, the preset's 8x8 generation with the tiny VAE
    pipe.update_components(scheduler=FlowMatchEulerDiscreteScheduler.from_config(shipped_config("flux_dev_scheduler")))
    expected = pipe(prompt=prompt["6"]["inputs"]["text"], generator=torch.Generator().manual_seed(SEED),
                    num_inference_steps=STEPS, guidance_scale=2.5, height=SIZE // 4, width=SIZE // 4,
                    output="images")[0]
    assert got.shape == (SIZE // 4, SIZE // 4, 3)
    np.testing.assert_array_equal(got, np.asarray(expected))
    info = engine.registry.node_info("DualCLIPLoader")["input"]["required"]
    assert info["clip_name1"][0] == ["clip_l", "t5"] and info["type"][0] == ["flux"]
