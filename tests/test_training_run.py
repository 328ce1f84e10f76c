"""Training runs on the tiny SD 1.5 folder: outputs the reference loads, options that take effect, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from training_fixtures import base_model, captioned_folder, fast_config, max_diff, unet_weights

from diffblocks import ModularPipeline
from diffblocks.blocks import InputParam, ModularPipelineBlocks, SequentialPipelineBlocks
from diffblocks.training import TEXT2IMAGE_TRAIN_BLOCKS, Trainer, train, train_text2image

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return base_model(tmp_path_factory)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return captioned_folder(tmp_path_factory.mktemp("train-data"), n=3)


def _images(folder, prompt="a pattern", steps=3):
    ours = ModularPipeline.from_pretrained(str(folder))
    ours.load_components()
    ours.set_progress_bar_config(disable=True)
    ref = diffusers.StableDiffusionPipeline.from_pretrained(str(folder))
    ref.set_progress_bar_config(disable=True)
    kw = dict(prompt=prompt, num_inference_steps=steps, height=16, width=16)
    got = ours(**kw, generator=torch.Generator().manual_seed(0), output_type="np", output="images")
    expected = ref(**kw, generator=torch.Generator().manual_seed(0), output_type="np").images
    return np.asarray(got), np.asarray(expected)


def test_full_fine_tune_overfits_and_loads_in_the_reference(base, tmp_path):
    data = captioned_folder(tmp_path / "two", n=2, mode="jsonl")
    result = train_text2image(fast_config(base, data, tmp_path / "out", max_train_steps=12, learning_rate=2e-3,
                                          lr_scheduler="constant"))
    assert result.global_step == 12 and len(result.losses) == 12
    # overfitting two images: the loss comes down (noisy per step, so compare averages of the ends)
    assert np.mean(result.losses[-4:]) < 0.6 * np.mean(result.losses[:4]), result.losses
    out = tmp_path / "out"
    assert max_diff(unet_weights(out), unet_weights(base)) > 1e-3  # trained
    got, expected = _images(out)
    assert np.abs(got - expected).max() <= 1e-4
    base_got, _ = _images(base)
    assert np.abs(got - base_got).max() > 1e-3  # the fine-tune changed the images


def _counting_blocks(record: list) -> SequentialPipelineBlocks:
    """The default graph plus a block after "optimize" that records whether the optimizer stepped."""

    class Record(ModularPipelineBlocks):
        inputs = property(lambda self: [InputParam("optimizer_stepped"), InputParam("timesteps")])

        def __call__(self, components, state):
            bs = self.get_block_state(state)
            record.append(bs.optimizer_stepped)
            return components, state

    blocks = SequentialPipelineBlocks.from_blocks_dict(TEXT2IMAGE_TRAIN_BLOCKS)
    blocks.sub_blocks.insert("record", Record(), len(blocks.sub_blocks))
    return blocks


def test_gradient_accumulation_steps_every_n_micro_batches(base, data, tmp_path):
    record: list = []
    result = train(fast_config(base, data, tmp_path / "ga", train_batch_size=1, gradient_accumulation_steps=2,
                               max_train_steps=2), blocks=_counting_blocks(record))
    # 3 images: micro-batches 1+2 make step 1, the epoch's last micro-batch makes step 2 (synced at epoch end)
    assert record == [False, True, True] and result.global_step == 2
    record.clear()
    train(fast_config(base, data, tmp_path / "ga1", train_batch_size=1, max_train_steps=2),
          blocks=_counting_blocks(record))
    assert record == [True, True]


def test_gradient_checkpointing_recomputes_in_backward(base, data, tmp_path):
    calls = {}
    for flag in (False, True):
        trainer = Trainer(fast_config(base, data, tmp_path / f"gc{flag}", max_train_steps=1,
                                      gradient_checkpointing=flag))
        trainer.setup()
        assert trainer.models.unet.is_gradient_checkpointing is flag
        resnet = trainer.models.unet.down_blocks[0].resnets[0]
        count = [0]
        forward = resnet.forward

        def counting(*args, _forward=forward, _count=count, **kwargs):
            _count[0] += 1
            return _forward(*args, **kwargs)

        resnet.forward = counting
        trainer.run()
        calls[flag] = count[0]
    assert calls == {False: 1, True: 2}  # checkpointed blocks run their forward again during backward


def test_use_ema_saves_the_moving_average(base, data, tmp_path):
    out = tmp_path / "ema"
    train(fast_config(base, data, out, use_ema=True, max_train_steps=2, checkpointing_steps=1))
    steps = [unet_weights(out / f"checkpoint-{i}") for i in (1, 2)]  # the raw weights after each step
    reference = diffusers.training_utils.EMAModel([torch.nn.Parameter(v.clone()) for v in steps[0].values()])
    reference.optimization_step = 0
    reference.shadow_params = [v.clone() for v in steps[0].values()]
    for w in steps:
        reference.step([torch.nn.Parameter(v.clone()) for v in w.values()])
    saved = unet_weights(out)
    expected = dict(zip(steps[0].keys(), reference.shadow_params))
    assert max_diff(saved, expected) < 1e-6
    assert max_diff(saved, steps[1]) > 1e-5  # not just the last weights


@pytest.mark.parametrize("option", [{"snr_gamma": 0.05}, {"noise_offset": 0.5}])
def test_loss_options_change_the_loss(base, data, tmp_path, option):
    plain = train(fast_config(base, data, tmp_path / "plain", max_train_steps=1))
    changed = train(fast_config(base, data, tmp_path / "changed", max_train_steps=1, **option))
    assert abs(plain.losses[0] - changed.losses[0]) > 1e-4


def test_train_text_encoder(base, data, tmp_path):
    from safetensors.torch import load_file

    def te(folder):
        return load_file(str(folder / "text_encoder" / "model.safetensors"))

    frozen = tmp_path / "frozen"
    train(fast_config(base, data, frozen, max_train_steps=1))
    assert max_diff(te(frozen), te(base)) == 0
    trained = tmp_path / "te"
    train(fast_config(base, data, trained, max_train_steps=1, train_text_encoder=True))
    assert max_diff(te(trained), te(base)) > 1e-4
    got, expected = _images(trained)
    assert np.abs(got - expected).max() <= 1e-4


def test_resume_equals_straight_training(base, data, tmp_path):
    opts = dict(train_batch_size=1, gradient_accumulation_steps=2, use_ema=True, random_flip=True,
                noise_offset=0.1, lr_scheduler="constant_with_warmup", lr_warmup_steps=4, checkpointing_steps=3)
    straight = tmp_path / "straight"
    train(fast_config(base, data, straight, max_train_steps=5, **opts))
    split = tmp_path / "split"
    train(fast_config(base, data, split, max_train_steps=3, **opts))  # stops at checkpoint-3, mid-epoch
    result = train(fast_config(base, data, split, max_train_steps=5, resume_from_checkpoint="latest", **opts))
    assert result.global_step == 5 and len(result.losses) == 2
    assert max_diff(unet_weights(split), unet_weights(straight)) <= 1e-6
    # and resuming is not a no-op: the weights at the checkpoint differ from the final ones
    assert max_diff(unet_weights(split / "checkpoint-3"), unet_weights(straight)) > 1e-5


def test_checkpoints_total_limit(base, data, tmp_path):
    out = tmp_path / "limit"
    train(fast_config(base, data, out, max_train_steps=3, checkpointing_steps=1, checkpoints_total_limit=2))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]


def test_validation_images_come_from_our_pipeline(base, data, tmp_path):
    out = tmp_path / "val"
    result = train(fast_config(base, data, out, max_train_steps=2, validation_prompt="a pattern",
                               num_validation_images=1, validation_steps=1, validation_inference_steps=2))
    assert [p.name for p in result.validation_images] == ["step-000001-0.png", "step-000002-0.png"]
    # the last validation image is our pipeline's image of the final weights
    pipe = ModularPipeline.from_pretrained(str(out))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt="a pattern", num_inference_steps=2, height=16, width=16,
                 generator=torch.Generator().manual_seed(0), output="images")[0]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(result.validation_images[-1])), np.asarray(image))


def test_mixed_precision_bf16_then_fp32_in_one_process(base, data, tmp_path):
    import torch

    trainer = Trainer(fast_config(base, data, tmp_path / "bf16", mixed_precision="bf16", max_train_steps=1))
    trainer.setup()
    assert trainer.models.vae.dtype == torch.bfloat16  # frozen weights in the compute dtype
    assert all(p.dtype == torch.float32 for p in trainer.models.unet.parameters())  # trained ones fp32
    result = trainer.run()
    assert np.isfinite(result.losses).all()
    assert unet_weights(tmp_path / "bf16")["conv_in.weight"].dtype == torch.float32
    again = Trainer(fast_config(base, data, tmp_path / "fp32", max_train_steps=1))
    again.setup()
    assert again.accelerator.mixed_precision == "no" and again.models.vae.dtype == torch.float32
