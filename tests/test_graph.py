"""The data-flow graph before any model loads: structure, validation problems, Mermaid, node specs."""

import json

import torch

from diffblocks import (
    AutoPipelineBlocks,
    ComponentSpec,
    InputParam,
    ModularPipelineBlocks,
    OutputParam,
    SequentialPipelineBlocks,
)
from diffblocks.presets.toy import ToyDiffusionBlocks


def leaf(name, inputs=(), outputs=(), components=()):
    return type(name, (ModularPipelineBlocks,), {
        "inputs": property(lambda self: list(inputs)),
        "intermediate_outputs": property(lambda self: list(outputs)),
        "expected_components": property(lambda self: list(components)),
        "description": property(lambda self: f"{name} step"),
    })


Encode = leaf("Encode", [InputParam("prompt", str, required=True)], [OutputParam("embeds", torch.Tensor)])
Denoise = leaf("Denoise", [InputParam("embeds", torch.Tensor, required=True)], [OutputParam("latents", torch.Tensor)])


def test_graph_has_blocks_variables_and_roles():
    seq = SequentialPipelineBlocks.from_blocks_dict({"encode": Encode, "denoise": Denoise})
    graph = seq.graph()
    assert graph.nodes["block:encode"]["cls"] == "Encode"
    assert graph.has_edge("var:prompt", "block:encode") and graph.edges["var:prompt", "block:encode"]["required"]
    assert graph.has_edge("block:encode", "var:embeds") and graph.has_edge("var:embeds", "block:denoise")
    assert graph.nodes["var:prompt"].get("pipeline_input") and not graph.nodes["var:embeds"].get("pipeline_input")


def test_validate_clean_graph_has_no_problems():
    assert SequentialPipelineBlocks.from_blocks_dict({"encode": Encode, "denoise": Denoise}).validate() == []
    assert ToyDiffusionBlocks().validate() == []


def test_validate_reports_required_input_produced_only_downstream():
    wrong_order = SequentialPipelineBlocks.from_blocks_dict({"denoise": Denoise, "encode": Encode})
    problems = wrong_order.validate()
    assert [(p.kind, p.block, p.name) for p in problems] == [("missing_input", "denoise", "embeds")]
    assert "downstream" in problems[0].message and "encode" in problems[0].message


def test_validate_with_declared_user_inputs():
    seq = SequentialPipelineBlocks.from_blocks_dict({"encode": Encode, "denoise": Denoise})
    problems = seq.validate(inputs=[])
    assert [(p.kind, p.name) for p in problems] == [("missing_input", "prompt")]
    assert seq.validate(inputs=["prompt"]) == []


def test_validate_reports_type_mismatch():
    WantsList = leaf("WantsList", [InputParam("embeds", list, required=True)], [])
    problems = SequentialPipelineBlocks.from_blocks_dict({"encode": Encode, "use": WantsList}).validate()
    assert [(p.kind, p.block, p.name) for p in problems] == [("type_mismatch", "use", "embeds")]
    assert "torch.Tensor" in problems[0].message and "list" in problems[0].message
    # compatible declarations (a union including the produced type, or a string name of it) are fine
    Union = leaf("Union", [InputParam("embeds", "torch.Tensor | None")], [])
    Optional = leaf("Optional", [InputParam("embeds", torch.Tensor | None)], [])
    assert SequentialPipelineBlocks.from_blocks_dict({"e": Encode, "o": Optional}).validate() == []
    assert all(p.kind != "type_mismatch" for p in SequentialPipelineBlocks.from_blocks_dict({"e": Encode, "u": Union}).validate())


def test_validate_reports_output_shadowing_and_skippable_producers():
    Shadow = leaf("Shadow", [], [OutputParam("embeds", torch.Tensor)])
    problems = SequentialPipelineBlocks.from_blocks_dict({"encode": Encode, "shadow": Shadow}).validate()
    assert [(p.kind, p.block, p.severity) for p in problems] == [("output_shadowing", "shadow", "warning")]

    Maybe = type("Maybe", (AutoPipelineBlocks,), {"block_classes": [Encode], "block_names": ["enc"],
                                                  "block_trigger_inputs": ["prompt"]})
    problems = SequentialPipelineBlocks.from_blocks_dict({"maybe": Maybe, "denoise": Denoise}).validate()
    assert [(p.kind, p.name) for p in problems] == [("maybe_missing_input", "embeds")]


def test_mermaid_draws_blocks_and_values():
    text = SequentialPipelineBlocks.from_blocks_dict({"encode": Encode, "denoise": Denoise}).to_mermaid()
    assert text.startswith("flowchart LR")
    assert '["encode<br/><i>Encode</i>"]' in text and '(["embeds"])' in text
    assert text.count("-->") == 4  # prompt->encode, encode->embeds, embeds->denoise, denoise->latents


def test_node_spec_is_json_and_describes_ports_and_components():
    Comp = leaf("Comp", [InputParam("steps", int, default=30, description="how many"), InputParam("x", torch.Tensor, required=True)],
                [OutputParam("y", torch.Tensor, "result")],
                [ComponentSpec("unet", torch.nn.Linear, description="the denoiser")])
    spec = json.loads(json.dumps(Comp().node_spec()))
    assert spec["inputs"][0] == {"name": "steps", "type": "int", "required": False, "default": 30,
                                 "description": "how many", "kwargs_type": None, "metadata": None}
    assert spec["inputs"][1]["required"] is True and spec["inputs"][1]["type"] == "torch.Tensor"
    assert spec["outputs"] == [{"name": "y", "type": "torch.Tensor", "description": "result", "kwargs_type": None}]
    assert spec["components"][0]["name"] == "unet" and spec["components"][0]["type"] == "Linear"
    toy = json.loads(json.dumps(ToyDiffusionBlocks().node_spec()))
    assert toy["trigger_inputs"] == ["init_points"] and toy["sub_blocks"] == ["prepare", "denoise", "summary"]


def test_toy_workflow_converges_to_target():
    pipe = ToyDiffusionBlocks().init_pipeline()
    pipe.set_progress_bar_config(disable=True)
    mean = pipe(num_points=4000, seed=1, output="mean")
    # the exact-denoiser ODE maps N(0, 80^2) to approximately N(target, I): the mean lands near the target
    assert torch.allclose(mean, torch.tensor([2.0, -1.0], dtype=torch.float64), atol=0.1)
    shifted = pipe(init_points=torch.zeros(64, 2), num_points=64, output="points")
    assert shifted.shape == (64, 2)


def test_validate_understands_branches_selected_by_what_a_skippable_producer_outputs():
    Enc = leaf("Enc", [InputParam("image", required=True)], [OutputParam("image_latents"), OutputParam("mask")])
    VaeEnc = type("VaeEnc", (AutoPipelineBlocks,), {"block_classes": [Enc], "block_names": ["enc"],
                                                    "block_trigger_inputs": ["image"]})
    Use = leaf("Use", [InputParam("image_latents", required=True)], [OutputParam("latents")])
    T2I = leaf("T2I", [], [OutputParam("latents")])

    def prep(trigger):
        return type("Prep", (AutoPipelineBlocks,), {"block_classes": [Use, T2I], "block_names": ["use", "t2i"],
                                                    "block_trigger_inputs": [trigger, None]})

    # `use` runs only when `mask` is present, which only the encoder (the producer) outputs: fine
    assert SequentialPipelineBlocks.from_blocks_dict({"vae": VaeEnc, "prep": prep("mask")}).validate() == []
    # selected by the value itself: fine too
    assert SequentialPipelineBlocks.from_blocks_dict({"vae": VaeEnc, "prep": prep("image_latents")}).validate() == []
    # selected by something unrelated: the producer may not have run
    problems = SequentialPipelineBlocks.from_blocks_dict({"vae": VaeEnc, "prep": prep("other")}).validate()
    assert [(p.kind, p.block, p.name) for p in problems] == [("maybe_missing_input", "prep.use", "image_latents")]


def test_presets_validate_clean():
    from diffblocks.presets.flux import FluxAutoBlocks
    from diffblocks.presets.sd import StableDiffusionAutoBlocks
    from diffblocks.presets.sdxl import StableDiffusionXLAutoBlocks

    for cls in (StableDiffusionAutoBlocks, StableDiffusionXLAutoBlocks, FluxAutoBlocks):
        assert cls().validate() == [], cls.__name__
        json.dumps(cls().node_spec())
