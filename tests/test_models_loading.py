"""Checkpoint I/O: round trips, variants, shards, strict key checks, offline local folders, peak memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from model_fixtures import SD15_UNET, SD_VAE, save_reference

from diffblocks.components.modeling import CheckpointError
from diffblocks.components.models import AutoencoderKL, UNet2DConditionModel


def _assert_same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("unet")
    save_reference("UNet2DConditionModel", SD15_UNET, path, seed=1)
    return path


def test_round_trip_identical_tensors(unet_dir, tmp_path):
    model = UNet2DConditionModel.from_pretrained(unet_dir)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == "UNet2DConditionModel"
    again = UNet2DConditionModel.from_pretrained(tmp_path)
    _assert_same_tensors(model, again)
    assert again.config == model.config
    assert not again.training


def test_diffusers_reads_our_save(unet_dir, tmp_path):
    from diffusers import UNet2DConditionModel as Ref

    ours = UNet2DConditionModel.from_pretrained(unet_dir)
    ours.save_pretrained(tmp_path, max_shard_size="200KB")
    ref = Ref.from_pretrained(str(tmp_path))
    _assert_same_tensors(ours, ref)


def test_sharded_and_fp16_variant(unet_dir, tmp_path):
    model = UNet2DConditionModel.from_pretrained(unet_dir)
    model.half().save_pretrained(tmp_path, variant="fp16", max_shard_size="300KB")
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(shards) > 2 and all(name.startswith("diffusion_pytorch_model.fp16") for name in shards)
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.fp16.json").exists()
    loaded = UNet2DConditionModel.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float16)
    _assert_same_tensors(model, loaded)
    upcast = UNet2DConditionModel.from_pretrained(tmp_path, variant="fp16")  # default dtype, as in diffusers
    assert upcast.dtype == torch.float32
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        UNet2DConditionModel.from_pretrained(tmp_path)  # no default weights in that folder


def test_reference_sharded_variant_loads(tmp_path):
    from diffusers import AutoencoderKL as Ref

    ref = save_reference("AutoencoderKL", SD_VAE, tmp_path, seed=2)
    ref.save_pretrained(str(tmp_path), variant="fp16", max_shard_size="100KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.fp16.json").exists()
    ours = AutoencoderKL.from_pretrained(tmp_path, variant="fp16")
    _assert_same_tensors(ours, Ref.from_pretrained(str(tmp_path), variant="fp16"))
    assert ours.config.block_out_channels == [32, 64]


def test_subfolder_and_unknown_config_keys(unet_dir, tmp_path):
    sub = tmp_path / "unet"
    sub.mkdir()
    config = json.loads((unet_dir / "config.json").read_text())
    config["some_future_key"] = {"x": 1}
    (sub / "config.json").write_text(json.dumps(config))
    (sub / "diffusion_pytorch_model.safetensors").write_bytes(
        (unet_dir / "diffusion_pytorch_model.safetensors").read_bytes())
    model = UNet2DConditionModel.from_pretrained(tmp_path, subfolder="unet")
    assert model.config["some_future_key"] == {"x": 1}


def test_local_folders_never_touch_the_network(unet_dir, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("network access for a local folder")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", no_network)
    UNet2DConditionModel.from_pretrained(unet_dir)


def test_mismatched_checkpoint_lists_keys(unet_dir, tmp_path):
    config = json.loads((unet_dir / "config.json").read_text())
    config["layers_per_block"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(
        (unet_dir / "diffusion_pytorch_model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"unexpected keys \(96\): down_blocks\.0\.attentions\.1\.norm\.bias") as info:
        UNet2DConditionModel.from_pretrained(tmp_path)
    assert "UNet2DConditionModel" in str(info.value)

    config = json.loads((unet_dir / "config.json").read_text())
    config["cross_attention_dim"] = 40
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"shape mismatches .*attn2\.to_k\.weight: checkpoint \(64, 32\) vs "
                                              r"model \(64, 40\)"):
        UNet2DConditionModel.from_pretrained(tmp_path)


def test_missing_keys_are_listed(tmp_path):
    from safetensors.torch import load_file, save_file

    save_reference("AutoencoderKL", SD_VAE, tmp_path, seed=3)
    state = load_file(str(tmp_path / "diffusion_pytorch_model.safetensors"))
    del state["decoder.conv_out.bias"]
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): decoder\.conv_out\.bias"):
        AutoencoderKL.from_pretrained(tmp_path)


def test_corrupted_file_is_a_clear_error(unet_dir, tmp_path):
    (tmp_path / "config.json").write_text((unet_dir / "config.json").read_text())
    data = (unet_dir / "diffusion_pytorch_model.safetensors").read_bytes()
    target = tmp_path / "diffusion_pytorch_model.safetensors"
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        UNet2DConditionModel.from_pretrained(tmp_path)
    target.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + data[24:100])
    with pytest.raises(CheckpointError, match="invalid JSON"):
        UNet2DConditionModel.from_pretrained(tmp_path)


def test_missing_weights_file(unet_dir, tmp_path):
    (tmp_path / "config.json").write_text((unet_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="No weights for UNet2DConditionModel"):
        UNet2DConditionModel.from_pretrained(tmp_path)


def test_helpers():
    model = AutoencoderKL.from_config(SD_VAE)
    n = sum(p.numel() for p in model.parameters())
    assert model.num_parameters() == n
    assert model.get_memory_footprint() == 4 * n
    assert model.to(torch.bfloat16).dtype == torch.bfloat16
    assert model.device == torch.device("cpu")
    assert repr(model).startswith("AutoencoderKL(\n")  # nn.Module's tree


def test_loading_holds_one_copy_of_the_weights(tmp_path):
    """Peak RSS growth while loading stays well under two copies of the weights."""
    UNet2DConditionModel.from_config(SD15_UNET).save_pretrained(tmp_path / "warmup")
    config = {**SD15_UNET, "block_out_channels": [128, 256], "cross_attention_dim": 256}
    model = UNet2DConditionModel.from_config(config)
    model.save_pretrained(tmp_path / "big")
    weight_bytes = model.get_memory_footprint()
    del model
    script = textwrap.dedent(f"""
        import gc, re
        from diffblocks.components.models import UNet2DConditionModel
        UNet2DConditionModel.from_pretrained({str(tmp_path / "warmup")!r})  # lazy imports are not weights
        gc.collect()
        def status(key):
            return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the RSS high-water mark to the current RSS
        rss = status("VmRSS")
        model = UNet2DConditionModel.from_pretrained({str(tmp_path / "big")!r})
        print(status("VmHWM") - rss)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    growth = int(out.stdout.strip().splitlines()[-1])
    assert weight_bytes > 50e6
    assert growth < 1.4 * weight_bytes, f"loading grew RSS by {growth / 1e6:.0f} MB for {weight_bytes / 1e6:.0f} MB"
