"""docs/adapters.md runs as written on the tiny SD 1.5 folder (LoRA files written by the reference)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from adapter_fixtures import add_image_encoder, random_ip_adapter, save_ip_adapter, write_reference_lora
from fixtures_sd import build_sd15, build_sdxl, test_image

DOC = Path(__file__).resolve().parents[1] / "docs" / "adapters.md"
diffusers = pytest.importorskip("diffusers")


def _code(section: str = "before") -> str:
    """The code of the LoRA / textual-inversion sections ("before" the IP-Adapter section) or of that section."""
    before, _, after = DOC.read_text().partition("\n## IP-Adapter\n")
    text = before if section == "before" else after
    return "\n".join(m.group(1) for m in re.finditer(r"```py\n(.*?)```", text, re.S))


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


def test_ip_adapter_doc_runs(tmp_path):
    """The documentation's IP-Adapter example on a tiny SDXL folder with an adapter built in the reference layout."""
    repo = add_image_encoder(build_sdxl(tmp_path))
    ref = diffusers.StableDiffusionXLPipeline.from_pretrained(str(repo))
    save_ip_adapter(random_ip_adapter(ref.unet, seed=3), tmp_path / "ip" / "sdxl_models" / "ip-adapter_sdxl.bin")
    ns = {"xl_repo": str(repo), "ip_repo": str(tmp_path / "ip"), "ip_adapter_image": test_image(40, seed=1),
          "init_image": test_image(32, seed=2), "__name__": "adapters_doc_ip"}
    code = _code("ip_adapter").replace("num_inference_steps=25", "num_inference_steps=4")
    exec(compile(code, str(DOC), "exec"), ns)
    pipe = ns["pipeline"]
    assert "ip_adapter" in pipe.blocks.sub_blocks
    assert np.asarray(ns["image"]).shape == (32, 32, 3)
    assert not any("to_k_ip" in k for k in pipe.unet.state_dict())  # unloaded at the end
