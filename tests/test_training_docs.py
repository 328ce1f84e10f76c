"""docs/training.md: the block list it shows and the Huber-loss example, run on the tiny SD 1.5 folder."""

from __future__ import annotations

import re
from pathlib import Path

from training_fixtures import base_model, captioned_folder

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
