"""The Modular Diffusers documentation examples that need no diffusion model, with only imports changed."""

import pytest
import torch
from PIL import Image

from diffblocks import (
    AutoPipelineBlocks,
    InputParam,
    InsertableDict,
    LoopSequentialPipelineBlocks,
    ModularPipelineBlocks,
    OutputParam,
    SequentialPipelineBlocks,
)

# --- SequentialPipelineBlocks guide -------------------------------------------------------------------


class InputBlock(ModularPipelineBlocks):
    @property
    def inputs(self):
        return [
            InputParam(name="prompt", type_hint=list, description="list of text prompts"),
            InputParam(name="num_images_per_prompt", type_hint=int, description="number of images per prompt"),
        ]

    @property
    def intermediate_outputs(self):
        return [
            OutputParam(name="batch_size", description="calculated batch size"),
        ]

    @property
    def description(self):
        return "A block that determines batch_size based on the number of prompts and num_images_per_prompt argument."

    def __call__(self, components, state):
        block_state = self.get_block_state(state)
        batch_size = len(block_state.prompt)
        block_state.batch_size = batch_size * block_state.num_images_per_prompt
        self.set_block_state(state, block_state)
        return components, state


class ImageEncoderBlock(ModularPipelineBlocks):
    @property
    def inputs(self):
        return [
            InputParam(name="image", type_hint="PIL.Image", description="raw input image to process"),
            InputParam(name="batch_size", type_hint=int),
        ]

    @property
    def intermediate_outputs(self):
        return [
            OutputParam(name="image_latents", description="latents representing the image"),
        ]

    @property
    def description(self):
        return "Encode raw image into its latent presentation"

    def __call__(self, components, state):
        block_state = self.get_block_state(state)
        block_state.image = torch.randn(1, 3, 512, 512)
        block_state.batch_size = block_state.batch_size * 2
        block_state.image_latents = torch.randn(1, 4, 64, 64)
        self.set_block_state(state, block_state)
        return components, state


def test_sequential_example_runs_and_documents():
    input_block, image_encoder_block = InputBlock(), ImageEncoderBlock()
    blocks_dict = InsertableDict()
    blocks_dict["input"] = input_block
    blocks_dict["image_encoder"] = image_encoder_block
    blocks = SequentialPipelineBlocks.from_blocks_dict(blocks_dict)

    text = repr(blocks)
    assert "[0] input (InputBlock)" in text and "[1] image_encoder (ImageEncoderBlock)" in text
    doc = blocks.doc
    assert "batch_size" not in doc.split("Inputs:")[1].split("Outputs:")[0]  # produced upstream: internal
    assert "image (`PIL.Image`" in doc and "image_latents" in doc.split("Outputs:")[1]

    pipe = blocks.init_pipeline()
    image = Image.new("RGB", (8, 8))
    state = pipe(prompt=["a cat", "a dog"], num_images_per_prompt=3, image=image)
    # batch size from the input block (2 prompts x 3), doubled by the encoder which writes it back
    assert state.get("batch_size") == 12
    assert state.get("image_latents").shape == (1, 4, 64, 64)
    assert isinstance(state.get("image"), torch.Tensor)  # modified input written back to the state


# --- AutoPipelineBlocks guide --------------------------------------------------------------------------
class TextToImageBlock(ModularPipelineBlocks):
    model_name = "text2img"

    @property
    def inputs(self):
        return [InputParam(name="prompt")]

    @property
    def intermediate_outputs(self):
        return []

    @property
    def description(self):
        return "我是一个文本到图像的工作流程！"

    def __call__(self, components, state):
        block_state = self.get_block_state(state)
        print("运行文本到图像工作流程")
        self.set_block_state(state, block_state)
        return components, state


class ImageToImageBlock(ModularPipelineBlocks):
    model_name = "img2img"

    @property
    def inputs(self):
        return [InputParam(name="prompt"), InputParam(name="image")]

    @property
    def intermediate_outputs(self):
        return []

    @property
    def description(self):
        return "我是一个图像到图像的工作流程！"

    def __call__(self, components, state):
        block_state = self.get_block_state(state)
        print("运行图像到图像工作流程")
        self.set_block_state(state, block_state)
        return components, state


class InpaintBlock(ModularPipelineBlocks):
    model_name = "inpaint"

    @property
    def inputs(self):
        return [InputParam(name="prompt"), InputParam(name="image"), InputParam(name="mask")]

    @property
    def intermediate_outputs(self):
        return []

    @property
    def description(self):
        return "我是一个修复工作流！"

    def __call__(self, components, state):
        block_state = self.get_block_state(state)
        print("运行修复工作流")
        self.set_block_state(state, block_state)
        return components, state


block_inpaint_cls, block_i2i_cls, block_t2i_cls = InpaintBlock, ImageToImageBlock, TextToImageBlock


class AutoImageBlocks(AutoPipelineBlocks):
    block_classes = [block_inpaint_cls, block_i2i_cls, block_t2i_cls]
    block_names = ["inpaint", "img2img", "text2img"]
    block_trigger_inputs = ["mask", "image", None]

    def description(self):
        return (
            "Pipeline generates images given different types of conditions!\n"
            + "This is an auto pipeline block that works for text2img, img2img and inpainting tasks.\n"
            + " - inpaint workflow is run when `mask` is provided.\n"
            + " - img2img workflow is run when `image` is provided (but only when `mask` is not provided).\n"
            + " - text2img workflow is run when neither `image` nor `mask` is provided.\n"
        )


def test_auto_example_selects_by_trigger(capsys):
    auto_blocks = AutoImageBlocks()
    assert isinstance(auto_blocks.get_execution_blocks("mask"), InpaintBlock)
    assert isinstance(auto_blocks.get_execution_blocks("image"), ImageToImageBlock)
    assert isinstance(auto_blocks.get_execution_blocks(), TextToImageBlock)
    assert isinstance(auto_blocks.get_execution_blocks("image", "mask"), InpaintBlock)  # first trigger wins
    assert "[trigger: mask] inpaint" in repr(auto_blocks) and "[default] text2img" in repr(auto_blocks)
    assert "inpaint workflow is run when `mask` is provided" in auto_blocks.doc

    pipe = auto_blocks.init_pipeline()
    pipe(prompt="x", image="img", mask="m")
    pipe(prompt="x", image="img")
    pipe(prompt="x")
    out = capsys.readouterr().out.splitlines()
    assert out == ["运行修复工作流", "运行图像到图像工作流程", "运行文本到图像工作流程"]


# --- LoopSequentialPipelineBlocks guide --------------------------------------------------------------------
class LoopWrapper(LoopSequentialPipelineBlocks):
    model_name = "test"

    @property
    def description(self):
        return "I'm a loop!!"

    @property
    def loop_inputs(self):
        return [InputParam(name="num_steps")]

    @torch.no_grad()
    def __call__(self, components, state):
        block_state = self.get_block_state(state)
        for i in range(block_state.num_steps):
            components, block_state = self.loop_step(components, block_state, i=i)
        self.set_block_state(state, block_state)
        return components, state


class LoopBlock(ModularPipelineBlocks):
    model_name = "test"

    @property
    def inputs(self):
        return [InputParam(name="x")]

    @property
    def intermediate_outputs(self):
        return [OutputParam(name="x")]

    @property
    def description(self):
        return "我是一个在`LoopWrapper`类内部使用的块"

    def __call__(self, components, block_state, i: int):
        block_state.x += 1
        return components, block_state


def test_loop_example_iterates_sub_blocks():
    loop = LoopWrapper.from_blocks_dict({"block1": LoopBlock})
    assert loop.input_names == ["num_steps", "x"]
    assert loop.init_pipeline()(x=0, num_steps=4, output="x") == 4

    loop = LoopWrapper.from_blocks_dict({"block1": LoopBlock(), "block2": LoopBlock})
    assert loop.init_pipeline()(x=10, num_steps=3, output="x") == 16


# --- ModularPipeline guide: editing presets and sub_blocks -----------------------------------------------
def test_insertable_dict_edits_on_presets_and_sub_blocks():
    BLOCKS = InsertableDict([("input", InputBlock), ("image_encoder", ImageEncoderBlock)])
    BLOCKS.insert("text2img", TextToImageBlock, 1)
    assert list(BLOCKS) == ["input", "text2img", "image_encoder"]
    BLOCKS.pop("text2img")
    BLOCKS["image_encoder"] = InpaintBlock  # replace a class in a preset, in place
    assert list(BLOCKS) == ["input", "image_encoder"] and BLOCKS["image_encoder"] is InpaintBlock

    t2i_blocks = SequentialPipelineBlocks.from_blocks_dict(BLOCKS)
    assert isinstance(t2i_blocks.sub_blocks["image_encoder"], InpaintBlock)  # classes are instantiated
    assert "mask" in t2i_blocks.input_names

    t2i_blocks.sub_blocks.insert("block_name", ImageEncoderBlock(), 1)
    assert list(t2i_blocks.sub_blocks) == ["input", "block_name", "image_encoder"]
    assert "image_latents" in t2i_blocks.intermediate_output_names  # derived ports follow the edit

    detached = t2i_blocks.sub_blocks.pop("block_name")
    assert isinstance(detached, ImageEncoderBlock)
    assert "image_latents" not in t2i_blocks.intermediate_output_names

    t2i_blocks.sub_blocks["image_encoder"] = ImageEncoderBlock()
    assert "mask" not in t2i_blocks.input_names and "image_latents" in t2i_blocks.intermediate_output_names


def test_insertable_dict_insert_positions():
    d = InsertableDict([("a", 1), ("b", 2)])
    d.insert("c", 3, 1)
    assert list(d.items()) == [("a", 1), ("c", 3), ("b", 2)]
    d.insert("a", 0, 10)  # existing key moves; index clamps to the end
    assert list(d) == ["c", "b", "a"]
    with pytest.raises(KeyError):
        d.pop("zzz")
