"""The pieces of the demo-model recipe (`make demo-model`): the word-level CLIP tokenizer, VAE training from
scratch, and the empty-prompt dropout the training workflow gained for classifier-free guidance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffblocks.demo_data import COLORS, SHAPES, generate_dataset
from diffblocks.demo_data.tokenizer import bpe, word_merges, write_clip_tokenizer


def test_demo_tokenizer_makes_each_caption_word_one_token(tmp_path):
    from transformers import CLIPTokenizer

    words = ["a", "on", "background", *COLORS, *SHAPES]
    write_clip_tokenizer(tmp_path / "tok", words, 16)
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"))  # transformers' own BPE, not ours
    ids = tokenizer("a green triangle on a white background").input_ids
    assert len(ids) == 2 + 7
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == [w + "</w>" for w in
                                                          ["a", "green", "triangle", "on", "a", "white", "background"]]
    assert len(tokenizer("zebra").input_ids) > 3  # other words still tokenize, as letters


def test_bpe_merges_reach_a_fixed_point():
    merges = word_merges(["green", "red", "reed"])
    ranks = {m: i for i, m in enumerate(merges)}
    assert [bpe(w, ranks) for w in ("green", "red", "reed")] == [["green</w>"], ["red</w>"], ["reed</w>"]]


def test_vae_training_reduces_reconstruction_error(tmp_path):
    from diffblocks.demo_data.vae_training import load_images, train_vae

    generate_dataset(tmp_path / "data", seed=0, per_combination=1)
    images = load_images(tmp_path / "data")[:16]
    config = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 64,
              "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
              "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4}
    result = train_vae(config, images, steps=40, batch_size=8, progress=False)
    assert np.mean(result.losses[-5:]) < 0.5 * np.mean(result.losses[:3])
    assert result.vae.config.scaling_factor == pytest.approx(result.scaling_factor)
    with torch.no_grad():
        latents = result.vae.encode(images).latent_dist.mode() * result.scaling_factor
    assert 0.5 < float(latents.std()) < 2.0  # about unit variance after scaling


def test_proportion_empty_prompts(tmp_path):
    from diffblocks.training.data import TrainingDataset, caption_folder_examples

    generate_dataset(tmp_path / "data", seed=0, per_combination=1)
    examples = caption_folder_examples(tmp_path / "data")
    plain = TrainingDataset(examples, 64)
    none = TrainingDataset(examples, 64, proportion_empty_prompts=0.0)
    some = TrainingDataset(examples, 64, proportion_empty_prompts=0.3)
    prompts = [some[i]["prompt"] for i in range(len(examples))]
    empty = sum(p == "" for p in prompts)
    assert 0.15 * len(examples) < empty < 0.45 * len(examples)
    assert all(p == ex.caption for p, ex in zip(prompts, examples) if p)
    assert [plain[i]["prompt"] for i in range(8)] == [none[i]["prompt"] for i in range(8)] == \
        [ex.caption for ex in examples[:8]]
    assert torch.equal(some[0]["image"], plain[0]["image"])  # dropout does not change the augmentation
    with pytest.raises(ValueError, match="proportion_empty_prompts"):
        TrainingDataset(examples, 64, proportion_empty_prompts=1.5)
