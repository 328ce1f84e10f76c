"""LoRA files the reference loads, and DreamBooth with prior preservation (class images from our pipeline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_sd import test_image
from safetensors import safe_open
from training_fixtures import base_model, captioned_folder, fast_config, max_diff, unet_weights

from diffblocks import ModularPipeline
from diffblocks.blocks import InputParam, ModularPipelineBlocks, SequentialPipelineBlocks
from diffblocks.training import DREAMBOOTH_TRAIN_BLOCKS, train

diffusers = pytest.importorskip("diffusers")

KW = dict(prompt="a pattern", num_inference_steps=3, height=16, width=16)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return base_model(tmp_path_factory)


def _ours(folder) -> ModularPipeline:
    pipe = ModularPipeline.from_pretrained(str(folder))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_lora_file_loads_in_the_reference_and_matches_ours(base, tmp_path):
    data = captioned_folder(tmp_path / "data", n=2)
    out = tmp_path / "lora"
    result = train(fast_config(base, data, out, lora=True, rank=4, lora_alpha=8, train_text_encoder=True,
                               learning_rate=2e-2, max_train_steps=3))
    assert result.global_step == 3
    path = out / "pytorch_lora_weights.safetensors"
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in keys
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight" in keys
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in keys if k.startswith("unet.")} >= {"to_q", "to_k", "to_v"}
    assert not (out / "unet").exists()  # LoRA runs write adapters, not a model folder

    ref = diffusers.StableDiffusionPipeline.from_pretrained(str(base))
    ref.set_progress_bar_config(disable=True)
    ref_base = ref(**KW, generator=torch.Generator().manual_seed(0), output_type="np").images
    ref.load_lora_weights(str(out))
    expected = ref(**KW, generator=torch.Generator().manual_seed(0), output_type="np").images
    ours = _ours(base)
    ours.load_lora_weights(str(out))  # diffblocks' own loader
    got = ours(**KW, generator=torch.Generator().manual_seed(0), output_type="np", output="images")
    assert np.abs(np.asarray(got) - expected).max() <= 1e-4
    assert np.abs(expected - ref_base).max() > 1e-4  # the adapters change the image


def _recording(record: list) -> SequentialPipelineBlocks:
    class Record(ModularPipelineBlocks):
        inputs = property(lambda self: [InputParam("loss"), InputParam("prior_loss"), InputParam("optimizer_stepped")])

        def __call__(self, components, state):
            bs = self.get_block_state(state)
            record.append((bs.loss.item(), None if bs.prior_loss is None else bs.prior_loss.item()))
            return components, state

    blocks = SequentialPipelineBlocks.from_blocks_dict(DREAMBOOTH_TRAIN_BLOCKS)
    blocks.sub_blocks.insert("record", Record(), len(blocks.sub_blocks))
    return blocks


def test_dreambooth_prior_preservation(base, tmp_path):
    instance = tmp_path / "instance"
    instance.mkdir()
    for i in range(2):
        test_image(24, seed=10 + i).save(instance / f"dog{i}.png")
    classes = tmp_path / "class"
    classes.mkdir()
    test_image(16, seed=20).save(classes / "have.png")
    opts = dict(workflow="dreambooth", train_data_dir=None, instance_data_dir=str(instance),
                instance_prompt="a photo of sks dog", with_prior_preservation=True, class_data_dir=str(classes),
                class_prompt="a photo of dog", num_class_images=3, sample_batch_size=2, class_generation_steps=2,
                max_train_steps=1)
    runs = {}
    for weight in (0.0, 1.0):
        record: list = []
        train(fast_config(base, None, tmp_path / f"db{weight}", prior_loss_weight=weight, **opts),
              blocks=_recording(record))
        runs[weight] = record[0]
    generated = sorted(p.name for p in classes.iterdir())
    assert generated == ["class-00001.png", "class-00002.png", "have.png"]  # 2 missing images made, once
    # they are our pipeline's images of the class prompt (seeds seed + index)
    pipe = _ours(base)
    image = pipe(prompt=["a photo of dog"], num_inference_steps=2, height=16, width=16,
                 generator=[torch.Generator().manual_seed(1)], output="images")[0]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(classes / "class-00001.png")), np.asarray(image))
    (loss0, prior0), (loss1, prior1) = runs[0.0], runs[1.0]
    assert prior0 is not None and prior0 == pytest.approx(prior1, rel=1e-6)
    assert loss1 == pytest.approx(loss0 + prior1, rel=1e-5)  # loss = instance loss + weight * prior loss
    assert (tmp_path / "db1.0" / "unet").is_dir()
    assert max_diff(unet_weights(tmp_path / "db1.0"), unet_weights(base)) > 0


def test_lora_resume_equals_straight_training(base, tmp_path):
    from safetensors.torch import load_file

    data = captioned_folder(tmp_path / "data", n=3)
    opts = dict(lora=True, rank=2, train_batch_size=1, learning_rate=1e-2, checkpointing_steps=2,
                lr_scheduler="linear", lr_warmup_steps=1)
    train(fast_config(base, data, tmp_path / "straight", max_train_steps=3, **opts))
    split = tmp_path / "split"
    with pytest.raises(Exception, match="stop after the checkpoint"):
        # a run killed right after checkpoint-2: a block that raises on the third step
        from diffblocks.training import TEXT2IMAGE_TRAIN_BLOCKS

        class Crash(ModularPipelineBlocks):
            inputs = property(lambda self: [InputParam("optimizer_stepped")])
            calls = [0]

            def __call__(self, components, state):
                self.calls[0] += 1
                if self.calls[0] == 3:
                    raise RuntimeError("stop after the checkpoint")
                return components, state

        blocks = SequentialPipelineBlocks.from_blocks_dict(TEXT2IMAGE_TRAIN_BLOCKS)
        blocks.sub_blocks.insert("crash", Crash(), 0)
        train(fast_config(base, data, split, max_train_steps=3, **opts), blocks=blocks)
    assert (split / "checkpoint-2" / "pytorch_lora_weights.safetensors").is_file()
    train(fast_config(base, data, split, max_train_steps=3, resume_from_checkpoint="latest", **opts))
    a = load_file(str(tmp_path / "straight" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(split / "pytorch_lora_weights.safetensors"))
    assert max_diff(a, b) <= 1e-6
    assert max_diff(a, load_file(str(split / "checkpoint-2" / "pytorch_lora_weights.safetensors"))) > 1e-6
