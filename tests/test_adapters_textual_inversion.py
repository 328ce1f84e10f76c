"""Textual inversion against the reference's loader: diffusers and A1111 files, multi-vector tokens, SDXL's two
encoders (clip_l / clip_g), unloading, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_sd import build_sd15, build_sdxl
from safetensors.torch import save_file

from diffblocks import ModularPipeline
from diffblocks.components.adapters import AdapterFileError

diffusers = pytest.importorskip("diffusers")
TOL = 1e-4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ti")
    return {"sd15": build_sd15(root), "sdxl": build_sdxl(root)}


def _ours(folder):
    pipe = ModularPipeline.from_pretrained(str(folder))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ref(cls, folder):
    pipe = cls.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(ref, ours, prompt):
    kw = dict(prompt=prompt, num_inference_steps=2, output_type="np")
    expected = ref(**kw, generator=torch.Generator().manual_seed(0)).images
    got = ours(**kw, generator=torch.Generator().manual_seed(0), output="images")
    return got, expected


def close(got, expected):
    err = np.abs(got - expected).max()
    assert err <= TOL, f"max abs difference {err:.2e} > {TOL}"


def _embedding(dim: int, vectors: int, seed: int) -> torch.Tensor:
    return torch.randn(vectors, dim, generator=torch.Generator().manual_seed(seed))


def test_sd15_diffusers_a1111_and_emb_params(folders, tmp_path):
    ref, ours = _ref(diffusers.StableDiffusionPipeline, folders["sd15"]), _ours(folders["sd15"])
    dim = ours.text_encoder.get_input_embeddings().weight.shape[1]
    rows = ours.text_encoder.get_input_embeddings().weight.shape[0]
    base = ours(prompt="a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output="images")

    (tmp_path / "d").mkdir()
    save_file({"<one>": _embedding(dim, 1, 1)}, str(tmp_path / "d" / "learned_embeds.safetensors"))
    ref.load_textual_inversion(str(tmp_path / "d"))
    assert ours.loader.load_textual_inversion(str(tmp_path / "d")) == ["<one>"]

    a1111 = tmp_path / "three.pt"  # A1111 layout, three vectors
    torch.save({"string_to_param": {"*": _embedding(dim, 3, 2)}, "name": "<three>", "step": 100}, str(a1111))
    ref.load_textual_inversion(str(a1111))
    assert ours.load_textual_inversion(str(a1111)) == ["<three>", "<three>_1", "<three>_2"]

    emb = _embedding(dim, 2, 3)  # newer A1111 layout; the reference reads it given as {token: tensor}
    ref.load_textual_inversion({"<two>": emb})
    ours.load_textual_inversion({"emb_params": emb}, token="<two>")

    got, expected = _images(ref, ours, ["a <one> cat", "a <three> dog on <two>"])
    close(got, expected)
    plain, _ = _images(ref, ours, ["a cat", "a dog on"])
    assert np.abs(got - plain).max() > 1e-2  # the tokens change the image

    ours.unload_textual_inversion("<three>")
    assert "<three>_1" not in ours.tokenizer.get_vocab() and "<one>" in ours.tokenizer.get_vocab()
    ours.unload_textual_inversion()
    assert "<one>" not in ours.tokenizer.get_vocab()
    assert ours.text_encoder.get_input_embeddings().weight.shape[0] == rows
    again = ours(prompt="a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output="images")
    assert np.array_equal(again, base)


def test_sdxl_clip_l_clip_g(folders, tmp_path):
    ref, ours = _ref(diffusers.StableDiffusionXLPipeline, folders["sdxl"]), _ours(folders["sdxl"])
    dim_l = ours.text_encoder.get_input_embeddings().weight.shape[1]
    dim_g = ours.text_encoder_2.get_input_embeddings().weight.shape[1]
    state = {"clip_l": _embedding(dim_l, 2, 4), "clip_g": _embedding(dim_g, 2, 5)}
    path = tmp_path / "xl.safetensors"
    save_file(state, str(path))
    ours.load_textual_inversion(str(path), token="<xl>")
    # the reference's documented way: one call per encoder
    ref.load_textual_inversion(state["clip_l"], token="<xl>", text_encoder=ref.text_encoder, tokenizer=ref.tokenizer)
    ref.load_textual_inversion(state["clip_g"], token="<xl>", text_encoder=ref.text_encoder_2,
                               tokenizer=ref.tokenizer_2)
    close(*_images(ref, ours, "a <xl> cat"))
    ours.unload_textual_inversion()
    assert "<xl>" not in ours.tokenizer_2.get_vocab()


def test_bad_embeddings_are_refused(folders):
    ours = _ours(folders["sd15"])
    with pytest.raises(AdapterFileError, match="takes vectors of size"):
        ours.load_textual_inversion({"<bad>": torch.zeros(1, 7)})
    with pytest.raises(AdapterFileError, match="not a textual-inversion file"):
        ours.load_textual_inversion({"a": torch.zeros(1), "b": torch.zeros(1)})
    with pytest.raises(AdapterFileError, match="names no token"):
        ours.load_textual_inversion({"emb_params": torch.zeros(1, 8)})
    dim = ours.text_encoder.get_input_embeddings().weight.shape[1]
    ours.load_textual_inversion({"<ok>": torch.zeros(1, dim)})
    with pytest.raises(ValueError, match="already in the tokenizer"):
        ours.load_textual_inversion({"<ok>": torch.zeros(1, dim)})
