"""docs/adapters.md runs as written on the tiny SD 1.5 folder (LoRA files written by the reference)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from adapter_fixtures import write_reference_lora
from fixtures_sd import build_sd15

DOC = Path(__file__).resolve().parents[1] / "docs" / "adapters.md"
diffusers = pytest.importorskip("diffusers")


def _code() -> str:
    return "\n".join(m.group(1) for m in re.finditer(r"```py\n(.*?)```", DOC.read_text(), re.S))


def test_adapters_doc_runs(tmp_path):
    repo = build_sd15(tmp_path)
    ref = diffusers.StableDiffusionPipeline.from_pretrained(str(repo))
    lora = write_reference_lora(ref, tmp_path / "lora", seed=1)
    lora_2 = write_reference_lora(ref, tmp_path / "lora2", seed=2, text_encoders=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ns = {"repo": str(repo), "lora_dir": str(lora.parent), "lora_dir_2": str(lora_2.parent), "out_dir": out_dir,
          "__name__": "adapters_doc"}
    code = _code().replace("num_inference_steps=4", "num_inference_steps=2")
    exec(compile(code, str(DOC), "exec"), ns)
    assert Path(ns["path"]).is_file()
    def arr(name):
        return np.asarray(ns[name], dtype=np.float32)

    assert np.abs(arr("image") - arr("half")).max() > 0  # the per-call scale changed the image
    assert ns["pipe"].get_list_adapters() == {}
    assert "<cat-toy>" not in ns["pipe"].tokenizer.get_vocab()
