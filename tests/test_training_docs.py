"""docs/training.md: the block lists it shows, the Huber-loss example (tiny SD 1.5 folder) and the SDXL example
(tiny SDXL folder)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from fixtures_sd import build_sdxl
from safetensors import safe_open
from training_fixtures import base_model, captioned_folder

from diffblocks import ModularPipeline
from diffblocks.training import TEXT2IMAGE_TRAIN_BLOCKS

DOC = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()


def test_block_list_in_the_doc_is_current():
    assert f"# {list(TEXT2IMAGE_TRAIN_BLOCKS)}" in DOC


def test_huber_loss_example_runs(tmp_path_factory, tmp_path):
    code = re.search(r"<!-- example: huber -->\n```python\n(.*?)```", DOC, re.S).group(1)
    namespace = {"model_dir": str(base_model(tmp_path_factory)),
                 "data_dir": str(captioned_folder(tmp_path / "data", n=2)), "output_dir": str(tmp_path / "out")}
    exec(compile(code, "docs/training.md", "exec"), namespace)
    result = namespace["result"]
    assert result.global_step == 2
    # the swapped block ran: Huber with delta 0.1 is ~0.1 |r|, far below the MSE (~1.5 at step 1 here)
    assert result.losses[0] < 0.3, result.losses
    assert type(namespace["blocks"].sub_blocks["loss"]).__name__ == "HuberLossStep"


def test_sdxl_block_list_in_the_doc_is_current():
    from diffblocks.training import SDXL_TEXT2IMAGE_TRAIN_BLOCKS

    assert f"# {list(SDXL_TEXT2IMAGE_TRAIN_BLOCKS)}" in DOC


def test_sdxl_example_runs(tmp_path_factory, tmp_path):
    code = re.search(r"<!-- example: sdxl -->\n```python\n(.*?)```", DOC, re.S).group(1)
    model = build_sdxl(tmp_path_factory.mktemp("docs-sdxl"))
    namespace = {"sdxl_model_dir": str(model), "data_dir": str(captioned_folder(tmp_path / "data", n=2)),
                 "output_dir": str(tmp_path / "out")}
    exec(compile(code, "docs/training.md", "exec"), namespace)
    assert namespace["result"].global_step == 2
    with safe_open(str(tmp_path / "out" / "pytorch_lora_weights.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder", "text_encoder_2"}
    plain = ModularPipeline.from_pretrained(str(model))
    plain.load_components()
    plain.set_progress_bar_config(disable=True)
    before = plain(prompt="a pattern", num_inference_steps=4, height=16, width=16,
                   generator=torch.Generator().manual_seed(0), output="images")[0]
    assert np.abs(np.asarray(namespace["image"], dtype=float) - np.asarray(before, dtype=float)).max() > 0
