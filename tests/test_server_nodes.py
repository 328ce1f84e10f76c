"""The node catalogue: /object_info entries in ComfyUI's format for the core nodes (names, inputs and outputs as
ComfyUI declares them) and for every preset block; checkpoint listing; the sampler mapping; block nodes running."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fixtures_sd import build_sd15

from diffblocks import ModularPipeline
from diffblocks.components.schedulers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from diffblocks.server import NodeRegistry, PromptEngine
from diffblocks.server.nodes.base import ServerPaths
from diffblocks.server.nodes.samplers import SAMPLER_NAMES, SCHEDULER_NAMES, check_sampler, make_scheduler

INFO_KEYS = {"input", "input_order", "output", "output_is_list", "output_name", "name", "display_name",
             "description", "python_module", "category", "output_node", "deprecated", "experimental"}

# ComfyUI's own declarations (nodes.py INPUT_TYPES / RETURN_TYPES), the contract workflows are written against
COMFY_CORE = {
    "CheckpointLoaderSimple": (["ckpt_name"], ["MODEL", "CLIP", "VAE"]),
    "CLIPTextEncode": (["text", "clip"], ["CONDITIONING"]),
    "CLIPSetLastLayer": (["clip", "stop_at_clip_layer"], ["CLIP"]),
    "EmptyLatentImage": (["width", "height", "batch_size"], ["LATENT"]),
    "KSampler": (["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                  "latent_image", "denoise"], ["LATENT"]),
    "KSamplerAdvanced": (["model", "add_noise", "noise_seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
                          "negative", "latent_image", "start_at_step", "end_at_step", "return_with_leftover_noise"],
                         ["LATENT"]),
    "VAEDecode": (["samples", "vae"], ["IMAGE"]),
    "VAEEncode": (["pixels", "vae"], ["LATENT"]),
    "LoadImage": (["image"], ["IMAGE", "MASK"]),
    "LoadImageMask": (["image", "channel"], ["MASK"]),
    "SaveImage": (["images", "filename_prefix"], []),
    "PreviewImage": (["images"], []),
    "LoraLoader": (["model", "clip", "lora_name", "strength_model", "strength_clip"], ["MODEL", "CLIP"]),
    "FluxGuidance": (["conditioning", "guidance"], ["CONDITIONING"]),
    "ControlNetLoader": (["control_net_name"], ["CONTROL_NET"]),
    "VAEEncodeForInpaint": (["pixels", "vae", "mask", "grow_mask_by"], ["LATENT"]),
    "UNETLoader": (["unet_name", "weight_dtype"], ["MODEL"]),
    "DualCLIPLoader": (["clip_name1", "clip_name2", "type"], ["CLIP"]),
    "VAELoader": (["vae_name"], ["VAE"]),
    "ControlNetApplyAdvanced": (["positive", "negative", "control_net", "image", "strength", "start_percent",
                                 "end_percent"], ["CONDITIONING", "CONDITIONING"]),
}


def check_spec(name: str, spec: list) -> None:
    """One input spec in ComfyUI's format."""
    assert isinstance(spec, list) and 1 <= len(spec) <= 2, (name, spec)
    kind = spec[0]
    options = spec[1] if len(spec) == 2 else {}
    assert isinstance(options, dict), (name, spec)
    if isinstance(kind, list):  # COMBO
        assert all(isinstance(v, (str, int, float)) for v in kind), (name, spec)
        if "default" in options:
            assert options["default"] in kind, (name, spec)
        return
    assert isinstance(kind, str) and kind == kind.upper(), (name, spec)
    if kind in ("INT", "FLOAT") and "default" in options:
        assert options["min"] <= options["default"] <= options["max"], (name, spec)
        assert isinstance(options["default"], int if kind == "INT" else float), (name, spec)
    if kind == "INT" and not options.get("forceInput"):
        assert "default" in options, (name, spec)


def check_info(class_type: str, info: dict) -> None:
    assert set(info) >= INFO_KEYS, class_type
    assert info["name"] == class_type
    assert set(info["input"]) <= {"required", "optional", "hidden"}
    assert info["input_order"] == {section: list(specs) for section, specs in info["input"].items()}
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            check_spec(f"{class_type}.{name}", spec)
    assert len(info["output"]) == len(info["output_is_list"]) == len(info["output_name"])
    assert isinstance(info["output_node"], bool) and isinstance(info["category"], str)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("server-nodes")
    folder = build_sd15(root / "models")
    (root / "models" / "checkpoints" / "sub").mkdir(parents=True)
    (root / "models" / "checkpoints" / "sub" / "single.safetensors").write_bytes(b"")
    (root / "models" / "notes").mkdir()  # a folder without model_index.json is not a checkpoint
    (root / "models" / "loras").mkdir()
    (root / "models" / "loras" / "style.safetensors").write_bytes(b"")
    return root, folder


def test_object_info_core_nodes_match_comfyui(models):
    root, _ = models
    registry = NodeRegistry(paths=ServerPaths.of(root / "models", root / "input", root / "output"))
    info = registry.object_info()
    json.dumps(info)  # served as JSON
    for class_type, (inputs, outputs) in COMFY_CORE.items():
        entry = info[class_type]
        check_info(class_type, entry)
        assert list(entry["input"]["required"]) == inputs, class_type
        assert entry["output"] == outputs, class_type
    assert info["SaveImage"]["output_node"] and info["PreviewImage"]["output_node"]
    assert info["SaveImage"]["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert info["CLIPTextEncode"]["input"]["required"]["text"][1]["multiline"] is True
    assert info["KSampler"]["input"]["required"]["sampler_name"][0] == SAMPLER_NAMES
    assert info["LoadImage"]["input"]["required"]["image"][1] == {"image_upload": True}
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["sd15", "sub/single.safetensors"]
    assert info["LoraLoader"]["input"]["required"]["lora_name"][0] == ["style.safetensors"]


def test_object_info_block_nodes(models):
    from diffblocks.server.nodes.blocks import _family_blocks

    info = NodeRegistry().object_info()
    for family in ("sd", "sdxl", "flux"):
        expected = {f"diffblocks/{family}/{cls.__name__}" for cls in _family_blocks(family)}
        listed = {name for name in info if name.startswith(f"diffblocks/{family}/")}
        assert listed == expected and len(listed) > 10, family
        for name in listed:
            check_info(name, info[name])
            assert info[name]["category"] == f"diffblocks/{family}" and info[name]["description"]
            assert info[name]["output"][0] == "DIFFBLOCKS_STATE"
    text = info["diffblocks/sd/StableDiffusionTextEncoderStep"]
    assert text["input"]["required"] == {"pipeline": ["DIFFBLOCKS_PIPELINE", text["input"]["required"]["pipeline"][1]]}
    assert text["input"]["optional"]["prompt"][0] == "STRING" and text["input"]["optional"]["prompt"][1]["multiline"]
    assert text["input"]["optional"]["prompt_embeds"][0] == "DIFFBLOCKS_EMBEDS"
    assert text["output_name"] == ["state", "prompt_embeds", "negative_prompt_embeds"]
    steps = info["diffblocks/sd/SetTimestepsStep"]["input"]["optional"]["num_inference_steps"]
    assert steps == ["INT", {"default": 50, "min": 1, "max": 10000, "step": 1}]
    decode = info["diffblocks/sd/DecodeStep"]
    assert decode["input"]["optional"]["output_type"][0] == ["pil", "np", "pt", "latent"]
    assert decode["input"]["optional"]["latents"][0] == "LATENT" and decode["output"] == ["DIFFBLOCKS_STATE", "IMAGE"]
    assert info["diffblocks/LoadPipeline"]["output"] == ["DIFFBLOCKS_PIPELINE"]


def test_sampler_mapping():
    base = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  prediction_type="v_prediction")
    sched = make_scheduler("dpmpp_2m", "karras", base)
    assert isinstance(sched, DPMSolverMultistepScheduler) and sched.config.use_karras_sigmas
    assert sched.config.algorithm_type == "dpmsolver++" and sched.config.prediction_type == "v_prediction"
    assert make_scheduler("euler", "normal", base).config.timestep_spacing == "linspace"
    assert make_scheduler("euler", "simple", base).config.timestep_spacing == "trailing"
    assert isinstance(make_scheduler("euler_ancestral", "normal", base), EulerAncestralDiscreteScheduler)
    assert isinstance(make_scheduler("ddim", "ddim_uniform", base), DDIMScheduler)
    for sampler in SAMPLER_NAMES:
        for scheduler in SCHEDULER_NAMES:
            if check_sampler(sampler, scheduler) is None:
                make_scheduler(sampler, scheduler, base)  # every pair offered builds
    assert "karras" in check_sampler("euler_ancestral", "karras")
    assert "heun" in check_sampler("heun", "normal")
    flow = FlowMatchEulerDiscreteScheduler(shift=3.0)
    assert make_scheduler("euler", "simple", flow).config.shift == 3.0
    with pytest.raises(ValueError, match="flow-matching"):
        make_scheduler("dpmpp_2m", "karras", flow)


def test_block_nodes_run_the_preset(models, tmp_path):
    """LoadPipeline -> diffblocks/sd/StableDiffusionAutoBlocks -> SaveImage gives the preset's image; a custom
    block registered with register_block runs as a node too."""
    import PIL.Image

    from diffblocks import InputParam, ModularPipelineBlocks, OutputParam

    root, folder = models
    engine = PromptEngine(models_dir=root / "models", input_dir=tmp_path / "in", output_dir=tmp_path / "out")
    prompt = {
        "1": {"class_type": "diffblocks/LoadPipeline", "inputs": {"ckpt_name": "sd15"}},
        "2": {"class_type": "diffblocks/sd/StableDiffusionAutoBlocks",
              "inputs": {"pipeline": ["1", 0], "prompt": "a red cat", "num_inference_steps": 2, "generator": 7,
                         "height": 32, "width": 32, "negative_prompt": ""}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 1 + _output_index(engine, "images")],
                                                    "filename_prefix": "blocks/run"}},
    }
    result = engine.validate(prompt)
    assert result.ok, result.node_errors
    ui = engine.execute("b", prompt, result.outputs)
    entry = ui["3"]["images"][0]
    assert entry["subfolder"] == "blocks"
    got = np.asarray(PIL.Image.open(tmp_path / "out" / "blocks" / entry["filename"]))
    pipe = ModularPipeline.from_pretrained(str(folder))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt="a red cat", num_inference_steps=2, generator=torch.Generator().manual_seed(7),
                    height=32, width=32, output="images")[0]
    np.testing.assert_array_equal(got, np.asarray(expected))

    class Brighten(ModularPipelineBlocks):
        @property
        def description(self):
            return "adds `amount` to a value"

        @property
        def inputs(self):
            return [InputParam("value", type_hint=float, default=1.0), InputParam("amount", type_hint=float,
                                                                                    default=0.5)]

        @property
        def intermediate_outputs(self):
            return [OutputParam("result", type_hint=float)]

        def __call__(self, components, state):
            bs = self.get_block_state(state)
            bs.result = bs.value + bs.amount
            self.set_block_state(state, bs)
            return components, state

    node = engine.registry.register_block(Brighten)
    assert node.class_type() == "diffblocks/custom/Brighten"
    info = engine.registry.node_info("diffblocks/custom/Brighten")
    assert info["input"]["optional"]["amount"] == ["FLOAT", {"default": 0.5, "min": -10000.0, "max": 10000.0,
                                                              "step": 0.01}]
    assert info["category"] == "diffblocks/custom" and info["output_name"] == ["state", "result"]
    custom = {"x": {"class_type": "diffblocks/custom/Brighten", "inputs": {"value": 2.0, "amount": 0.25}}}
    engine.execute("c", custom, ["x"])
    state, value = engine.cache.get(engine._signatures(custom, ["x"])["x"]).outputs
    assert value == 2.25 and state["result"] == 2.25


def _output_index(engine, name: str) -> int:
    info = engine.registry.node_info("diffblocks/sd/StableDiffusionAutoBlocks")
    return info["output_name"].index(name) - 1


def test_block_nodes_chained_through_state(models, tmp_path):
    """The SD text-to-image preset step by step, one block node per step linked by `state`, gives the preset's
    image (the tiny checkpoint's PNDM scheduler is deterministic: the seed only draws the initial noise)."""
    import PIL.Image

    root, folder = models
    engine = PromptEngine(models_dir=root / "models", input_dir=tmp_path / "in", output_dir=tmp_path / "out")
    steps = ["StableDiffusionTextEncoderStep", "StableDiffusionInputStep", "SetTimestepsStep", "PrepareLatentsStep",
             "DenoiseStep", "DecodeStep"]
    widgets = {"StableDiffusionTextEncoderStep": {"prompt": "a red cat", "negative_prompt": "blurry"},
               "SetTimestepsStep": {"num_inference_steps": 2},
               "PrepareLatentsStep": {"height": 32, "width": 32, "generator": 9}}
    prompt = {"p": {"class_type": "diffblocks/LoadPipeline", "inputs": {"ckpt_name": "sd15"}}}
    previous = None
    for i, name in enumerate(steps):
        inputs = {"pipeline": ["p", 0], **widgets.get(name, {})}
        if previous is not None:
            inputs["state"] = [previous, 0]
        prompt[str(i)] = {"class_type": f"diffblocks/sd/{name}", "inputs": inputs}
        previous = str(i)
    images = engine.registry.node_info("diffblocks/sd/DecodeStep")["output_name"].index("images")
    prompt["save"] = {"class_type": "SaveImage", "inputs": {"images": [previous, images], "filename_prefix": "x"}}
    result = engine.validate(prompt)
    assert result.ok, result.node_errors
    entry = engine.execute("chain", prompt, result.outputs)["save"]["images"][0]
    got = np.asarray(PIL.Image.open(tmp_path / "out" / entry["filename"]))
    pipe = ModularPipeline.from_pretrained(str(folder))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt="a red cat", negative_prompt="blurry", num_inference_steps=2, height=32, width=32,
                    generator=torch.Generator().manual_seed(9), output="images")[0]
    np.testing.assert_array_equal(got, np.asarray(expected))
