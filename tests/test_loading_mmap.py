"""Checkpoint reading through safetensors' memory map: views until cast/moved, crafted files refused, placement."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from model_fixtures import SD15_UNET, SD_VAE, save_reference
from safetensors.torch import save_file

from diffblocks import load_state_dict
from diffblocks.components.modeling import CheckpointError
from diffblocks.components.models import AutoencoderKL, ControlNetModel, UNet2DConditionModel

REPO = Path(__file__).resolve().parents[1]


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process mapped from `path` (Linux /proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path.resolve())):
            lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
            ranges.append((lo, hi))
    return ranges


def _views(tensors, path: Path) -> list[bool]:
    """For each tensor: does its data lie in a mapping of `path`?"""
    ranges = _mapped_ranges(path)
    return [any(lo <= t.data_ptr() < hi for lo, hi in ranges) for t in tensors]


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae")
    save_reference("AutoencoderKL", SD_VAE, path, seed=4)
    return path


needs_proc = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc/self/maps")


@needs_proc
def test_loaded_parameters_are_views_of_the_mapped_file(vae_dir):
    file = vae_dir / "diffusion_pytorch_model.safetensors"
    model = AutoencoderKL.from_pretrained(vae_dir)
    params = dict(model.named_parameters())
    assert all(_views(params.values(), file))
    # cast or copied: private memory, no longer the file
    half = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float16)
    assert half.dtype == torch.float16 and not any(_views(half.parameters(), file))
    private = AutoencoderKL.from_pretrained(vae_dir, low_cpu_mem_usage=False)
    assert not any(_views(private.parameters(), file))
    for name, p in private.named_parameters():
        assert torch.equal(p, params[name]), name
    # the helper alone: views on the CPU at the file's dtype, converted copies otherwise
    state = load_state_dict(file)
    assert all(_views(state.values(), file))
    assert not any(_views(load_state_dict(file, dtype=torch.bfloat16).values(), file))


def test_load_state_dict_helper_dtype_device_and_mappings(vae_dir):
    file = vae_dir / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    expected = load_file(str(file))
    half = load_state_dict(file, dtype=torch.float16)
    assert set(half) == set(expected)
    for key, tensor in expected.items():
        assert half[key].dtype == torch.float16 and torch.equal(half[key], tensor.half()), key
    meta = load_state_dict(file, device="meta")
    assert all(t.is_meta and t.shape == expected[k].shape for k, t in meta.items())
    mixed = load_state_dict(file, device=lambda key: "meta" if key.startswith("decoder.") else "cpu")
    assert all(t.is_meta == k.startswith("decoder.") for k, t in mixed.items())
    from_dict = load_state_dict({"a": torch.ones(2), "i": torch.ones(2, dtype=torch.int64)}, dtype=torch.bfloat16)
    assert from_dict["a"].dtype == torch.bfloat16 and from_dict["i"].dtype == torch.int64  # ints are not cast
    with pytest.raises(CheckpointError, match="'x' is a str, not a tensor"):
        load_state_dict({"x": "nope"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state_dict(vae_dir / "nothing.safetensors")


def test_window_of_converted_tensors_releases_the_map(vae_dir, monkeypatch):
    """A conversion reopens the map every window of bytes, and still yields every tensor exactly once."""
    from diffblocks.components import state_dict as module

    file = vae_dir / "diffusion_pytorch_model.safetensors"
    opened = []
    real_open = module._open
    monkeypatch.setattr(module, "_open", lambda path: opened.append(path) or real_open(path))
    monkeypatch.setattr(module, "_WINDOW_BYTES", 64 * 1024)
    half = module.load_state_dict(file, dtype=torch.float16)
    from safetensors.torch import load_file

    expected = load_file(str(file))
    assert set(half) == set(expected) and len(opened) > 3
    assert all(torch.equal(half[k], v.half()) for k, v in expected.items())


def _write_raw(path: Path, header: dict | None, data: bytes, header_len: int | None = None) -> Path:
    raw = b"" if header is None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)
    return path


CRAFTED = {
    "huge_shape": ({"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20, 1 << 12], "data_offsets": [0, 16]}}, 16, None),
    "huge_shape_and_offsets": ({"w": {"dtype": "F32", "shape": [1 << 28, 1 << 20], "data_offsets": [0, 1 << 50]}}, 16,
                               None),
    "overlapping": ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                     "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, 24, None),
    "out_of_range": ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [64, 80]}}, 16, None),
    "truncated": ({"a": {"dtype": "F32", "shape": [1024], "data_offsets": [0, 4096]}}, 100, None),
    "header_length_lie": (None, 0, 1 << 40),
}


def test_crafted_files_are_refused_before_any_allocation(tmp_path):
    files = []
    for case, (header, nbytes, header_len) in sorted(CRAFTED.items()):
        files.append(str(_write_raw(tmp_path / f"{case}.safetensors", header, b"\0" * nbytes, header_len)))
    # a child with a 1 GiB address-space allowance above its start: allocating a claimed shape would fail differently
    script = textwrap.dedent(f"""
        import re, resource
        import torch
        from diffblocks import load_state_dict
        from diffblocks.components.modeling import CheckpointError
        vm = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.RLIM_INFINITY))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for file in {files!r}:
            try:
                load_state_dict(file, dtype=torch.float16)
                print("LOADED", file)
            except CheckpointError as exc:
                print("REFUSED", exc)
        print("GROWN_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    refused = [line for line in out.stdout.splitlines() if line.startswith("REFUSED")]
    assert len(refused) == len(files), out.stdout
    for file, line in zip(files, refused):
        assert file in line and "not a valid safetensors file" in line, line
    assert "header too large" in out.stdout and "invalid offset for tensor `b`" in out.stdout
    assert int(out.stdout.split("GROWN_KB")[1]) < 50_000, out.stdout


def test_crafted_file_refused_by_from_pretrained(vae_dir, tmp_path):
    (tmp_path / "config.json").write_text((vae_dir / "config.json").read_text())
    _write_raw(tmp_path / "diffusion_pytorch_model.safetensors", CRAFTED["overlapping"][0], b"\0" * 24)
    with pytest.raises(CheckpointError, match=r"invalid offset for tensor `b`"):
        AutoencoderKL.from_pretrained(tmp_path)


def test_key_errors_come_before_reading_any_weight(vae_dir, tmp_path, monkeypatch):
    """Strict key checks use the headers only: a mismatched checkpoint is refused without converting a tensor."""
    from diffblocks.components import state_dict as module

    (tmp_path / "config.json").write_text((vae_dir / "config.json").read_text())
    state = load_state_dict(vae_dir / "diffusion_pytorch_model.safetensors")
    state["decoder.extra.weight"] = torch.zeros(3)
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    calls = []
    monkeypatch.setattr(module, "_convert", lambda *a: calls.append(a) or a[0])
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): decoder\.extra\.weight"):
        AutoencoderKL.from_pretrained(tmp_path, torch_dtype=torch.float16)
    assert calls == []


def test_saving_over_the_loaded_folder_keeps_the_loaded_model(vae_dir, tmp_path):
    """Parameters map the file; saving (other weights) into the same folder must not change them under it."""
    folder = tmp_path / "vae"
    AutoencoderKL.from_pretrained(vae_dir).save_pretrained(folder)
    loaded = AutoencoderKL.from_pretrained(folder)
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    other = AutoencoderKL.from_config(SD_VAE)
    torch.nn.init.constant_(other.decoder.conv_out.weight, 3.0)
    other.save_pretrained(folder)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(AutoencoderKL.from_pretrained(folder).decoder.conv_out.weight, other.decoder.conv_out.weight)
    assert not list(folder.glob(".*.tmp"))


def test_fp16_cast_equals_reference(vae_dir):
    from diffusers import AutoencoderKL as Ref

    ours = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float16)
    ref = Ref.from_pretrained(str(vae_dir), torch_dtype=torch.float16)
    ref_state = ref.state_dict()
    for key, value in ours.state_dict().items():
        assert value.dtype == ref_state[key].dtype and torch.equal(value, ref_state[key]), key


# -- placement: device / device_map / max_memory / low_cpu_mem_usage --------------------------------------------

def test_meta_device_builds_a_shapes_only_model(vae_dir):
    model = AutoencoderKL.from_pretrained(vae_dir, device="meta", torch_dtype=torch.float16)
    assert all(p.is_meta and p.dtype == torch.float16 for p in model.parameters())
    reference = AutoencoderKL.from_pretrained(vae_dir)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


@needs_proc
def test_cpu_device_maps_load_like_a_plain_load(vae_dir):
    file = vae_dir / "diffusion_pytorch_model.safetensors"
    plain = AutoencoderKL.from_pretrained(vae_dir)
    expected = plain.state_dict()
    for device_map in ("cpu", {"": "cpu"}, torch.device("cpu"), {"encoder": "cpu", "decoder": "cpu", "quant_conv": "cpu",
                                                               "post_quant_conv": "cpu"}, "auto", "balanced", "sequential"):
        model = AutoencoderKL.from_pretrained(vae_dir, device_map=device_map)
        assert set(model.hf_device_map.values()) == {"cpu"}, device_map
        assert all(_views(model.parameters(), file))
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in expected.items()), device_map
    sample = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(sample, sample_posterior=False).sample, plain(sample, sample_posterior=False).sample)
    cast = AutoencoderKL.from_pretrained(vae_dir, device_map="auto", max_memory={"cpu": "4GiB"}, torch_dtype=torch.float16)
    assert cast.dtype == torch.float16


def test_auto_device_map_that_needs_disk_is_refused(vae_dir):
    with pytest.raises(ValueError, match=r"does not fit in max_memory.*offload .* to disk.*Raise max_memory"):
        AutoencoderKL.from_pretrained(vae_dir, device_map="auto", max_memory={"cpu": 10_000})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"device": "cpu", "device_map": "auto"}, r"pass device='cpu' or device_map='auto', not both"),
        ({"device_map": "auto", "low_cpu_mem_usage": False}, r"needs low_cpu_mem_usage=True"),
        ({"device_map": "fastest"}, r"device_map='fastest' is neither a device .* nor one of \['auto'"),
        ({"device_map": -1}, r"device_map -1 is negative; pass 'cpu'"),
        ({"device_map": {"decoder": "disk", "": "cpu"}}, r"device_map\['decoder'\] = 'disk': disk offload is not supported"),
        ({"device_map": {"decoderr": "cpu", "": "cpu"}}, r"names module\(s\) the model does not have: \['decoderr'\]"),
        ({"device_map": {"decoder": "cpu"}}, r"device_map gives no device for \d+ tensor\(s\), e\.g\. \['encoder\."),
        ({"device_map": ["cpu"]}, r"device_map must be a dict, a device or one of"),
        ({"max_memory": {"cpu": "1GiB"}}, r"max_memory only applies to device_map in \['auto'"),
        ({"device": "warp-drive"}, r"device 'warp-drive' is not a device such as 'cpu'"),
        ({"device": "meta", "low_cpu_mem_usage": False}, r"device='meta' needs low_cpu_mem_usage=True"),
    ],
)
def test_placement_arguments_are_validated(vae_dir, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        AutoencoderKL.from_pretrained(vae_dir, **kwargs)
    assert "AutoencoderKL" in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_unavailable_accelerator_is_a_clear_error(vae_dir):
    with pytest.raises(ValueError, match=r"device 'cuda' is not available on this machine .*Use 'cpu'"):
        AutoencoderKL.from_pretrained(vae_dir, device="cuda")
    with pytest.raises(ValueError, match=r"device_map\['decoder'\] 'cuda:0' is not available"):
        AutoencoderKL.from_pretrained(vae_dir, device_map={"decoder": 0, "": "cpu"})


def test_auto_map_needs_no_split_modules(tmp_path):
    from model_fixtures import CONTROLNET

    save_reference("ControlNetModel", CONTROLNET, tmp_path, seed=5)
    with pytest.raises(ValueError, match=r"ControlNetModel does not support device_map='auto'"):
        ControlNetModel.from_pretrained(tmp_path, device_map="auto")
    assert ControlNetModel.from_pretrained(tmp_path, device_map={"": "cpu"}).hf_device_map == {"": "cpu"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_direct_to_cuda_load_matches_cpu(vae_dir):
    cpu = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float16)
    gpu = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float16, device="cuda")
    assert all(p.is_cuda for p in gpu.parameters()) and all(b.is_cuda for b in gpu.buffers())
    for key, value in gpu.state_dict().items():
        assert torch.equal(value.cpu(), cpu.state_dict()[key]), key
    unet_dir = vae_dir.parent / "unet_cuda"
    save_reference("UNet2DConditionModel", SD15_UNET, unet_dir, seed=6)
    split = UNet2DConditionModel.from_pretrained(unet_dir, device_map={"down_blocks": 0, "": "cpu"})
    assert {p.device.type for p in split.down_blocks.parameters()} == {"cuda"}
