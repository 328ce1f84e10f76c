"""LoRA on SD 1.5 (tiny): files written by the reference load to the same images in both libraries; weights,
fusing, unloading, sharing through a ComponentsManager, offload, saving, per-call scale and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from adapter_fixtures import allow_reference_text_encoder_lora, write_reference_lora
from fixtures_sd import build_sd15
from safetensors.torch import load_file, save_file

from diffblocks import ComponentsManager, ModularPipeline
from diffblocks.components.adapters import AdapterFileError, adapter_version, save_lora_weights
from diffblocks.components.offload import module_memory_bytes

diffusers = pytest.importorskip("diffusers")
TOL = 1e-4
KW = dict(prompt="a red cat", num_inference_steps=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    allow_reference_text_encoder_lora()
    return build_sd15(tmp_path_factory.mktemp("lora-sd15"))


@pytest.fixture(scope="module")
def files(folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-files")
    ref = _ref(folder)
    a = write_reference_lora(ref, root / "a", seed=1, rank=4, alpha=8.0)
    b = write_reference_lora(ref, root / "b", seed=2, rank=2, alpha=2.0, metadata=False)
    from diffusers.utils import convert_state_dict_to_kohya

    kohya = root / "kohya.safetensors"
    save_file(convert_state_dict_to_kohya(load_file(str(b))), str(kohya))
    return {"a": a, "b": b, "kohya": kohya}


def _ref(folder):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ours(folder, **kwargs) -> ModularPipeline:
    pipe = ModularPipeline.from_pretrained(str(folder), **kwargs)
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ref_image(pipe, **kwargs):
    return pipe(**{**KW, **kwargs}, generator=torch.Generator().manual_seed(0), output_type="np").images


def our_image(pipe, **kwargs):
    return pipe(**{**KW, **kwargs}, generator=torch.Generator().manual_seed(0), output_type="np", output="images")


def close(got, expected, tol=TOL):
    err = np.abs(got - expected).max()
    assert err <= tol, f"max abs difference {err:.2e} > {tol}"


@pytest.fixture(scope="module")
def base(folder):
    return our_image(_ours(folder))


def test_reference_file_same_image_and_per_call_scale(folder, files, base):
    ref, ours = _ref(folder), _ours(folder)
    ref.load_lora_weights(str(files["a"].parent), adapter_name="a")
    assert ours.loader.load_lora_weights(str(files["a"].parent), adapter_name="a") == "a"
    expected = ref_image(ref)
    assert np.abs(expected - base).max() > 0.05  # the LoRA changes the image, so a dropped layer would show
    close(our_image(ours), expected)
    half = {"scale": 0.5}
    expected_half = ref_image(ref, cross_attention_kwargs=half)
    close(our_image(ours, cross_attention_kwargs=half), expected_half)
    assert np.abs(expected_half - expected).max() > 0.01
    close(our_image(ours), expected)  # the per-call scale leaves the adapter as it was
    assert ours.get_list_adapters() == {"text_encoder": ["a"], "unet": ["a"]} or \
        ours.get_list_adapters() == {"unet": ["a"], "text_encoder": ["a"]}
    assert ours.get_active_adapters() == ref.get_active_adapters() == ["a"]


def test_kohya_layout_same_image(folder, files):
    ref, ours = _ref(folder), _ours(folder)
    ref.load_lora_weights(str(files["kohya"]))
    ours.load_lora_weights(str(files["kohya"]))
    close(our_image(ours), ref_image(ref))


def test_two_adapters_weighted_and_per_component(folder, files):
    ref, ours = _ref(folder), _ours(folder)
    for pipe in (ref, ours):
        pipe.load_lora_weights(str(files["a"]), adapter_name="a")
        pipe.load_lora_weights(str(files["b"]), adapter_name="b")
        pipe.set_adapters(["a", "b"], [0.5, 0.8])
    assert ours.get_active_adapters() == ["a", "b"]
    close(our_image(ours), ref_image(ref))
    for pipe in (ref, ours):
        pipe.set_adapters(["a", "b"], [{"unet": 0.3, "text_encoder": 1.0}, {"unet": 1.0, "text_encoder": 0.2}])
    close(our_image(ours), ref_image(ref))


def test_fuse_unfuse_unload_disable(folder, files, base):
    ref, ours = _ref(folder), _ours(folder)
    version = adapter_version(ours.unet)
    ours.load_lora_weights(str(files["a"]), adapter_name="a")
    assert adapter_version(ours.unet) > version
    lora = our_image(ours)
    ours.disable_lora()
    assert np.array_equal(our_image(ours), base)
    ours.enable_lora()
    assert np.array_equal(our_image(ours), lora)
    ours.fuse_lora()
    close(our_image(ours), lora)
    ours.unfuse_lora()
    assert np.array_equal(our_image(ours), lora)
    ours.unload_lora_weights()
    assert ours.get_list_adapters() == {}
    assert np.array_equal(our_image(ours), base)
    assert not any("lora" in n for n, _ in ours.unet.named_modules())
    # fuse at a scale, then unload: the LoRA is baked into the weights (the reference's documented workflow)
    ref.load_lora_weights(str(files["a"]), adapter_name="a")
    ours.load_lora_weights(str(files["a"]), adapter_name="a")
    ref.fuse_lora(components=["unet", "text_encoder"], lora_scale=0.5)
    ours.fuse_lora(lora_scale=0.5, components=["unet", "text_encoder"])
    close(our_image(ours), ref_image(ref))
    ref.unload_lora_weights()
    ours.unload_lora_weights()
    close(our_image(ours), ref_image(ref))
    assert ours.get_list_adapters() == {}


def test_delete_adapters(folder, files, base):
    ours = _ours(folder)
    ours.load_lora_weights(str(files["a"]), adapter_name="a")
    ours.load_lora_weights(str(files["b"]), adapter_name="b")
    ours.delete_adapters("a")
    assert ours.get_list_adapters()["unet"] == ["b"]
    ref = _ref(folder)
    ref.load_lora_weights(str(files["b"]), adapter_name="b")
    close(our_image(ours), ref_image(ref))
    ours.delete_adapters(["b"])
    assert np.array_equal(our_image(ours), base)


def test_saved_lora_loads_in_reference(folder, files, tmp_path):
    """The diffusers/peft-layout writer (what training uses) makes a file the reference loads to the same image."""
    ours = _ours(folder)
    ours.load_lora_weights(str(files["kohya"]), adapter_name="k")
    path = save_lora_weights(tmp_path, {"unet": ours.unet, "text_encoder": ours.text_encoder})
    keys = list(load_file(str(path)))
    assert all(k.startswith(("unet.", "text_encoder.")) and ".lora_" in k for k in keys)
    ref = _ref(folder)
    ref.load_lora_weights(str(tmp_path))
    close(our_image(ours), ref_image(ref))


def test_shared_manager_sees_lora_and_offload_is_identical(folder, files):
    manager = ComponentsManager()
    first = _ours(folder, components_manager=manager, collection="one")
    second = _ours(folder, components_manager=manager, collection="two")
    assert second.unet is first.unet
    first.load_lora_weights(str(files["a"]), adapter_name="style")
    assert second.get_list_adapters()["unet"] == ["style"]
    assert "style" in repr(manager)
    expected = our_image(first)
    assert np.array_equal(our_image(second), expected)
    largest = max(module_memory_bytes(m) for m in manager.components.values() if isinstance(m, torch.nn.Module))
    manager.enable_auto_cpu_offload(device="cpu", memory_reserve_margin=0, max_memory=largest)
    try:
        assert np.array_equal(our_image(second), expected)
    finally:
        manager.disable_auto_cpu_offload()


def test_bad_input_is_reported_and_pipeline_keeps_working(folder, files, base, tmp_path):
    ours = _ours(folder)
    good = load_file(str(files["a"]))

    unknown = {**good, "vae.decoder.conv_in.lora_A.weight": torch.zeros(4, 4), "foo.bar": torch.zeros(1)}
    with pytest.raises(AdapterFileError, match="foo.bar"):
        ours.load_lora_weights(unknown)

    key = next(k for k in good if k.startswith("unet.") and k.endswith("lora_B.weight"))
    bad_rank = {**good, key: good[key][:, :3]}
    with pytest.raises(AdapterFileError, match="rank 3"):
        ours.load_lora_weights(bad_rank)

    key = next(k for k in good if "attn2.to_k.lora_A" in k)
    bad_shape = {**good, key: torch.zeros(4, 2048)}
    with pytest.raises(AdapterFileError, match="another model family"):
        ours.load_lora_weights(bad_shape)

    path = tmp_path / "kohya_bad.safetensors"
    save_file({"lora_unet_no_such_block_to_q.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_no_such_block_to_q.lora_up.weight": torch.zeros(4, 2)}, str(path))
    with pytest.raises(AdapterFileError, match="no_such_block"):
        ours.load_lora_weights(str(path))

    ours.load_lora_weights(str(files["a"]), adapter_name="a")
    with pytest.raises(ValueError, match="already used"):
        ours.load_lora_weights(str(files["b"]), adapter_name="a")
    with pytest.raises(ValueError, match=r"\['missing'\] not loaded"):
        ours.set_adapters(["a", "missing"])
    with pytest.raises(AdapterFileError, match="must be a path inside"):
        ours.load_lora_weights(str(files["a"].parent), weight_name="../kohya.safetensors")
    ours.unload_lora_weights()
    assert ours.get_list_adapters() == {}
    assert np.array_equal(our_image(ours), base)
