"""The ModularPipeline guide's examples (editing presets, component state, loading, specs) on a tiny SDXL folder."""

import copy

import pytest
import torch
from fixtures_sd import build_sdxl

from diffblocks import (
    ComponentsManager,
    ComponentSpec,
    InsertableDict,
    ModularPipelineBlocks,
    SequentialPipelineBlocks,
    UNet2DConditionModel,
)
from diffblocks.presets.sdxl import TEXT2IMAGE_BLOCKS


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return str(build_sdxl(tmp_path_factory.mktemp("sdxl-docs")))


def test_text2image_example(repo):
    blocks = SequentialPipelineBlocks.from_blocks_dict(TEXT2IMAGE_BLOCKS)
    pipeline = blocks.init_pipeline(repo)
    pipeline.load_components(torch_dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline(prompt="Astronaut in a jungle", num_inference_steps=2, output="images")[0]
    side = pipeline.unet.config.sample_size * 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
    assert image.size == (side, side)  # height/width default from the UNet config


def test_component_state_lists_match_the_guide(repo):
    components = ComponentsManager()
    t2i_pipeline = SequentialPipelineBlocks.from_blocks_dict(TEXT2IMAGE_BLOCKS).init_pipeline(
        repo, components_manager=components)
    assert set(t2i_pipeline.component_names) == {"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                                                 "guider", "scheduler", "unet", "vae", "image_processor"}
    assert set(t2i_pipeline.config_component_names) == {"guider", "image_processor"}
    assert set(t2i_pipeline.pretrained_component_names) == {"text_encoder", "text_encoder_2", "tokenizer",
                                                            "tokenizer_2", "scheduler", "unet", "vae"}
    assert set(t2i_pipeline.null_component_names) == set(t2i_pipeline.pretrained_component_names)

    t2i_pipeline.load_components(names=["unet", "vae"], torch_dtype=torch.float32)
    assert set(t2i_pipeline.null_component_names) == {"text_encoder", "text_encoder_2", "tokenizer",
                                                      "tokenizer_2", "scheduler"}
    assert components.get_one(name="unet") is t2i_pipeline.unet
    assert "not loaded" in repr(t2i_pipeline) and "UNet2DConditionModel" in repr(t2i_pipeline)

    # a second pipeline in another collection reuses what the manager holds (same load ids)
    pipe2 = SequentialPipelineBlocks.from_blocks_dict(TEXT2IMAGE_BLOCKS).init_pipeline(
        repo, components_manager=components, collection="test2")
    comp_dict = components.get_components_by_names(names=["unet", "vae"])
    pipe2.update_components(**comp_dict)
    assert pipe2.unet is t2i_pipeline.unet


def test_component_specs_extract_modify_reload(repo):
    unet_spec = ComponentSpec(name="unet", type_hint=UNet2DConditionModel, repo=repo, subfolder="unet")
    unet = unet_spec.load(torch_dtype=torch.float32)
    spec = ComponentSpec.from_component("unet", unet)
    assert spec.pretrained_model_name_or_path == repo and spec.subfolder == "unet"
    assert spec.default_creation_method == "from_pretrained"
    recreated = spec.load()
    assert torch.equal(next(recreated.parameters()), next(unet.parameters()))

    pipeline = SequentialPipelineBlocks.from_blocks_dict(TEXT2IMAGE_BLOCKS).init_pipeline(repo)
    pipeline.update_components(unet=unet)
    got = pipeline.get_component_spec("unet")
    got.repo = repo  # modify, then load with the modified spec
    assert torch.equal(next(got.load().parameters()), next(unet.parameters()))
    assert pipeline.get_component_spec("unet") is not pipeline.get_component_spec("unet")  # copies


def test_editing_preset_dicts_and_sub_blocks():
    BLOCKS = copy.copy(TEXT2IMAGE_BLOCKS)  # the guide edits the module's dict; a copy keeps other tests clean

    class CustomPrepareLatents(ModularPipelineBlocks):
        @property
        def description(self):
            return "custom"

    BLOCKS.insert("custom", CustomPrepareLatents, 1)
    assert list(BLOCKS)[1] == "custom"
    BLOCKS.pop("text_encoder")
    BLOCKS["prepare_latents"] = CustomPrepareLatents
    assert "text_encoder" not in BLOCKS and BLOCKS["prepare_latents"] is CustomPrepareLatents
    assert isinstance(BLOCKS, InsertableDict) and "text_encoder" in TEXT2IMAGE_BLOCKS

    t2i_blocks = SequentialPipelineBlocks.from_blocks_dict(TEXT2IMAGE_BLOCKS)
    text_encoder_block = t2i_blocks.sub_blocks.pop("text_encoder")
    assert "prompt" not in t2i_blocks.input_names and "prompt" in text_encoder_block.input_names
    t2i_blocks.sub_blocks["prepare_latents"] = CustomPrepareLatents()
    t2i_blocks.sub_blocks.insert("text_encoder", text_encoder_block, 0)
    assert list(t2i_blocks.sub_blocks)[0] == "text_encoder" and "prompt" in t2i_blocks.input_names
    assert isinstance(t2i_blocks.sub_blocks["prepare_latents"], CustomPrepareLatents)
