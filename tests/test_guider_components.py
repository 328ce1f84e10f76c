"""Guiders as pipeline components: swapping, and round trips through modular_model_index.json."""

import json
import logging

import torch

from diffblocks import (
    ClassifierFreeGuidance,
    ComponentSpec,
    InputParam,
    ModularPipeline,
    ModularPipelineBlocks,
    OutputParam,
    PerturbedAttentionGuidance,
    SequentialPipelineBlocks,
)


class Guide(ModularPipelineBlocks):
    @property
    def expected_components(self):
        return [ComponentSpec("guider", ClassifierFreeGuidance, config={"guidance_scale": 7.5},
                              default_creation_method="from_config")]

    @property
    def inputs(self):
        return [InputParam("cond", torch.Tensor, required=True), InputParam("uncond", torch.Tensor, required=True)]

    @property
    def intermediate_outputs(self):
        return [OutputParam("pred", torch.Tensor)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        guider = components.guider
        guider.set_state(step=0, num_inference_steps=1, timestep=torch.tensor(999))
        preds = {"pred_cond": bs.cond, "pred_uncond": bs.uncond}
        bs.pred = guider.combine(preds).pred if guider.num_conditions > 1 else bs.cond
        self.set_block_state(state, bs)
        return components, state


def blocks():
    return SequentialPipelineBlocks.from_blocks_dict({"guide": Guide})


def test_default_guider_created_and_used():
    pipe = blocks().init_pipeline()
    assert isinstance(pipe.guider, ClassifierFreeGuidance) and pipe.guider.config.guidance_scale == 7.5
    c, u = torch.randn(1, 4), torch.randn(1, 4)
    assert torch.allclose(pipe(cond=c, uncond=u, output="pred"), u + 7.5 * (c - u))


def test_custom_guider_round_trips_through_the_index(tmp_path, caplog):
    pipe = blocks().init_pipeline()
    with caplog.at_level(logging.INFO):
        pipe.update_components(guider=PerturbedAttentionGuidance(guidance_scale=4.0, perturbed_guidance_scale=1.5))
    assert "ClassifierFreeGuidance -> PerturbedAttentionGuidance" in caplog.text
    pipe.save_pretrained(tmp_path / "saved")
    entry = json.loads((tmp_path / "saved" / "modular_model_index.json").read_text())["guider"]
    assert entry[:2] == ["diffblocks", "PerturbedAttentionGuidance"]
    assert entry[2]["subfolder"] == "guider" and entry[2]["type_hint"] == ["diffblocks", "PerturbedAttentionGuidance"]
    assert (tmp_path / "saved" / "guider" / "guider_config.json").exists()

    loaded = ModularPipeline.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    assert loaded.get_component_spec("guider").default_creation_method == "from_pretrained"
    loaded.load_components()
    assert isinstance(loaded.guider, PerturbedAttentionGuidance)
    assert loaded.guider.config.guidance_scale == 4.0 and loaded.guider.config.perturbed_guidance_scale == 1.5


def test_default_guider_is_not_written_and_spec_swap_creates():
    pipe = blocks().init_pipeline()
    pipe.update_components(guider=ComponentSpec("guider", ClassifierFreeGuidance, config={"guidance_scale": 2.0},
                                                default_creation_method="from_config"))
    assert pipe.guider.config.guidance_scale == 2.0
    pipe.update_components(guider=ClassifierFreeGuidance(guidance_scale=7.5))
    assert pipe.config.get("guider") is None  # an unchanged config component is recreated from the blocks
