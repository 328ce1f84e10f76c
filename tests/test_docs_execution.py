"""The examples of docs/execution.md run as written on a tiny SD pipeline (all but the signal/timer one)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from fixtures_sd import build_sd15

from diffblocks import ModularPipeline

DOC = Path(__file__).resolve().parents[1] / "docs" / "execution.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    pipe = ModularPipeline.from_pretrained(str(build_sd15(tmp_path_factory.mktemp("docs-execution"))))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("marker", ["halve_at_step_1", "add_progress_handler", "enable_block_cache",
                                    "PreviewCallback(show"])
def test_doc_example_runs(pipe, marker, tmp_path, monkeypatch):
    (code,) = [block for block in BLOCKS if marker in block]
    monkeypatch.chdir(tmp_path)
    namespace = {"pipe": pipe, "torch": torch}
    cached = []
    handler = pipe.add_progress_handler(lambda e: cached.append(e.cached) if e.kind == "block_end" else None)
    try:
        exec(compile(code, f"{DOC.name}:{marker}", "exec"), namespace)
    finally:
        pipe.remove_progress_handler(handler)
    if marker == "enable_block_cache":
        assert namespace["a"][0].size == namespace["b"][0].size
        assert True in cached  # the second call reused the text encoding
    if marker == "PreviewCallback(show":
        assert (tmp_path / "preview_000.png").exists() and (tmp_path / "preview_009.png").exists()
