"""Resuming reads safetensors and JSON only: with accelerate's pickles deleted and every unpickler disabled, an
SDXL LoRA run (three prepared models, a block drawing from the global torch RNG) resumes to the same weights as
the straight run; the state files round-trip optimizer, schedule and RNG states exactly."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from fixtures_sd import build_sdxl
from safetensors.torch import load_file
from training_fixtures import captioned_folder, fast_config, max_diff

from diffblocks.blocks import InputParam, ModularPipelineBlocks, OutputParam, SequentialPipelineBlocks
from diffblocks.training import SDXL_TEXT2IMAGE_TRAIN_BLOCKS, train
from diffblocks.training.state_files import get_rng_states, load_tree, save_tree, set_rng_states


class GlobalRngJitter(ModularPipelineBlocks):
    """An augmentation drawing from torch's global RNG: resume equals straight only if that RNG is restored."""

    inputs = property(lambda self: [InputParam("image", required=True)])
    intermediate_outputs = property(lambda self: [OutputParam("image")])

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        bs.image = (bs.image + 0.2 * torch.rand(bs.image.shape)).clamp(0, 1)
        self.set_block_state(state, bs)
        return components, state


def _blocks():
    blocks = SequentialPipelineBlocks.from_blocks_dict(SDXL_TEXT2IMAGE_TRAIN_BLOCKS)
    blocks.sub_blocks.insert("jitter", GlobalRngJitter(), 0)
    return blocks


def _no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("resume unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


def test_sdxl_lora_resume_reads_no_pickle(tmp_path_factory, tmp_path, monkeypatch):
    base = build_sdxl(tmp_path_factory.mktemp("resume-sdxl"))
    data = captioned_folder(tmp_path / "data", n=2)
    opts = dict(lora=True, train_text_encoder=True, learning_rate=1e-2, checkpointing_steps=2,
                lr_scheduler="constant_with_warmup", lr_warmup_steps=5, max_train_steps=3)
    straight = tmp_path / "straight"
    train(fast_config(base, data, straight, **opts), blocks=_blocks())
    split = tmp_path / "split"
    train(fast_config(base, data, split, **{**opts, "max_train_steps": 2}), blocks=_blocks())
    ckpt = split / "checkpoint-2"
    pickles = sorted(p.name for p in ckpt.iterdir() if p.suffix in (".bin", ".pkl"))
    assert pickles == ["optimizer.bin", "random_states_0.pkl", "scheduler.bin"]  # what accelerate wrote
    for name in pickles:
        (ckpt / name).unlink()
    with monkeypatch.context() as m:
        _no_unpickling(m)
        result = train(fast_config(base, data, split, resume_from_checkpoint="latest", **opts), blocks=_blocks())
    assert result.global_step == 3 and len(result.losses) == 1
    final = load_file(str(split / "pytorch_lora_weights.safetensors"))
    assert max_diff(final, load_file(str(straight / "pytorch_lora_weights.safetensors"))) <= 1e-6
    assert max_diff(final, load_file(str(ckpt / "pytorch_lora_weights.safetensors"))) > 1e-5


def test_resume_refuses_a_checkpoint_without_the_state_files(tmp_path_factory, tmp_path):
    from diffblocks.training import TrainingConfigError

    base = build_sdxl(tmp_path_factory.mktemp("resume-sdxl-bad"))
    data = captioned_folder(tmp_path / "data", n=2)
    out = tmp_path / "out"
    train(fast_config(base, data, out, max_train_steps=1, checkpointing_steps=1, lora=True))
    (out / "checkpoint-1" / "optimizer_state.json").unlink()
    with pytest.raises(TrainingConfigError, match=r"missing \['optimizer_state.json'\].*safetensors \+ JSON"):
        train(fast_config(base, data, out, max_train_steps=2, lora=True, resume_from_checkpoint="latest"))


def test_state_files_round_trip(tmp_path):
    param = torch.nn.Parameter(torch.randn(3))
    optimizer = torch.optim.AdamW([param], lr=1e-3, betas=(0.8, 0.9))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    for _ in range(2):
        param.grad = torch.randn(3)
        optimizer.step()
        schedule.step()
    for name, state in (("opt", optimizer.state_dict()), ("sched", schedule.state_dict())):
        save_tree(state, tmp_path / name)
        loaded = load_tree(tmp_path / name)
        assert repr(loaded) == repr(state)  # same structure, keys (int param ids), tuples and values
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    save_tree(get_rng_states(), tmp_path / "rng")
    expected = (torch.rand(2), random.random(), np.random.rand())
    set_rng_states(load_tree(tmp_path / "rng"))
    again = (torch.rand(2), random.random(), np.random.rand())
    assert torch.equal(again[0], expected[0]) and again[1:] == expected[1:]
    with pytest.raises(TypeError, match="a object cannot be saved"):
        save_tree({"x": object()}, tmp_path / "bad")
