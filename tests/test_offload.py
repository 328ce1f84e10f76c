"""Auto CPU offload through the ComponentsManager.

On CPU the execution device is simulated: device="cpu" with a byte budget (`max_memory`) or an
injected `memory_info`, and placement is read from the offloader's bookkeeping and event log. The
expected event sequences below are worked out by hand from the documented eviction rule (least
recently used first, then keep back any evicted model whose bytes were not needed). Tests that need
real data movement run only when CUDA is available.
"""

from __future__ import annotations

import logging

import pytest
import torch

from diffblocks.components.manager import ComponentsManager
from diffblocks.components.offload import (
    OffloadCandidate,
    lru_size_aware_policy,
    module_memory_bytes,
    parse_size,
)


def _linear(n: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(n, n, bias=False)  # 4 * n * n bytes in fp32


class TinyVAE(torch.nn.Module):
    """encode/decode entry points; forward calls both (nested managed calls)."""

    def __init__(self, seed: int = 3):
        super().__init__()
        self.enc = _linear(16, seed)  # 1024 bytes
        self.use_tiling = False
        self.fail_untiled = 0  # how many untiled decodes still raise OOM

    def encode(self, x):
        return self.enc(x)

    def decode(self, z):
        if self.fail_untiled and not self.use_tiling:
            self.fail_untiled -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.enc(z) * 2

    def forward(self, x):
        return self.decode(self.encode(x))

    def enable_tiling(self):
        self.use_tiling = True

    def disable_tiling(self):
        self.use_tiling = False


TE1, TE2, UNET, VAE = 1024, 4096, 16384, 1024  # bytes of the modules below


@pytest.fixture
def sdxl_like():
    cm = ComponentsManager()
    mods = {"text_encoder": _linear(16, 0), "text_encoder_2": _linear(32, 1), "unet": _linear(64, 2), "vae": TinyVAE()}
    ids = {name: cm.add(name, m, collection="a") for name, m in mods.items()}
    assert [module_memory_bytes(m) for m in mods.values()] == [TE1, TE2, UNET, VAE]
    return cm, mods, ids


def _run(mods, steps=3):
    """A text-to-image shaped workflow: encoders once, the denoiser every step, the VAE at the end."""
    mods["text_encoder"](torch.ones(1, 16))
    mods["text_encoder_2"](torch.ones(1, 32))
    x = torch.ones(1, 64)
    for _ in range(steps):
        x = mods["unet"](x) / 8
    return mods["vae"].decode(x[:, :16])


def _events(cm, ids):
    names = {cid: name for name, cid in ids.items()}
    return [(kind, names.get(cid, cid)) for kind, cid in cm.auto_offload.events]


def test_parse_size_matches_accelerate():
    from accelerate.utils.modeling import convert_file_size_to_int

    for text in ("3GB", "3GiB", "512MB", "1.5GB", "10KiB"):
        assert parse_size(text) == convert_file_size_to_int(text), text
    assert parse_size(123) == 123
    with pytest.raises(ValueError, match="cannot read memory size '3 parsecs'"):
        parse_size("3 parsecs")


def test_policy_lru_then_keep_back_unneeded():
    def cands(*spec):
        return [OffloadCandidate(n, torch.nn.Identity(), size, t) for t, (n, size) in enumerate(spec)]

    # the reference's worked example (sizes in units of 10 MB): LRU order te1, te2, vae, controlnet
    c = cands(("te1", 25), ("te2", 140), ("vae", 17), ("controlnet", 250))
    assert [x.component_id for x in lru_size_aware_policy(c, 179)] == ["te1", "te2", "vae"]
    # the oldest alone is enough
    c = cands(("controlnet", 250), ("te1", 25))
    assert [x.component_id for x in lru_size_aware_policy(c, 100)] == ["controlnet"]
    # te1 (oldest) is evicted first, but unet alone covers the need, so te1 is kept back
    c = cands(("te1", 25), ("unet", 500))
    assert [x.component_id for x in lru_size_aware_policy(c, 400)] == ["unet"]
    # not enough in total: everything
    c = cands(("a", 1), ("b", 2))
    assert [x.component_id for x in lru_size_aware_policy(c, 10)] == ["a", "b"]
    assert lru_size_aware_policy([], 10) == []


def test_enable_needs_a_memory_source_on_cpu(sdxl_like):
    cm, _, _ = sdxl_like
    with pytest.raises(RuntimeError, match="cannot read free memory of device 'cpu'.*max_memory="):
        cm.enable_auto_cpu_offload(device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs CUDA"):
            cm.enable_auto_cpu_offload(device="cuda")
    assert cm.auto_offload is None


def test_which_models_move_when(sdxl_like):
    cm, mods, ids = sdxl_like
    reference = _run(mods)
    cm.enable_auto_cpu_offload(device="cpu", memory_reserve_margin=0, max_memory=UNET + VAE)
    assert cm.auto_offload.resident_ids() == []
    out = _run(mods)
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    # te1, te2 fit; unet needs 4096 more: LRU walk takes te1 then te2, te2 alone suffices so te1 stays;
    # the VAE needs 1024: te1 is now the least recently used and enough
    assert _events(cm, ids) == [
        ("load", "text_encoder"),
        ("load", "text_encoder_2"),
        ("evict", "text_encoder_2"),
        ("load", "unet"),
        ("evict", "text_encoder"),
        ("load", "vae"),
    ]
    assert cm.auto_offload.resident_ids() == [ids["unet"], ids["vae"]]
    cm.auto_offload.events.clear()
    _run(mods)
    # te1 needs 1024 with nothing free: unet (used before the VAE) is least recent and goes. te2 fits.
    # unet needs 5120: LRU walk vae, te1, te2 = 6144; keeping te1 back still frees 5120.
    assert _events(cm, ids) == [
        ("evict", "unet"),
        ("load", "text_encoder"),
        ("load", "text_encoder_2"),
        ("evict", "vae"),
        ("evict", "text_encoder_2"),
        ("load", "unet"),
        ("evict", "text_encoder"),
        ("load", "vae"),
    ]
    assert cm.auto_offload.resident_bytes() <= UNET + VAE


def test_everything_resident_when_it_fits(sdxl_like):
    cm, mods, ids = sdxl_like
    cm.enable_auto_cpu_offload(device="cpu", memory_reserve_margin="1KB", max_memory=TE1 + TE2 + UNET + VAE + 1000)
    _run(mods)
    _run(mods)
    assert [k for k, _ in cm.auto_offload.events] == ["load"] * 4


def test_memory_info_provider_and_margin(sdxl_like):
    """An injected (free, total) provider drives the decisions; the margin is kept free."""
    cm, mods, ids = sdxl_like
    capacity = UNET + TE2 + 3000
    calls = []

    def fake_device(device):
        calls.append(device)
        return capacity - cm.auto_offload.resident_bytes(), capacity

    cm.enable_auto_cpu_offload(device="cpu", memory_reserve_margin=3000, memory_info=fake_device)
    _run(mods, steps=1)
    assert calls and all(str(d) == "cpu" for d in calls)
    # budget for models: UNET + TE2. te1, te2 load (5120); unet needs 1024 more -> te1 (LRU) is enough;
    # the VAE needs 1024 with 0 free: te2 is least recent now
    assert _events(cm, ids) == [
        ("load", "text_encoder"),
        ("load", "text_encoder_2"),
        ("evict", "text_encoder"),
        ("load", "unet"),
        ("evict", "text_encoder_2"),
        ("load", "vae"),
    ]


def test_custom_policy(sdxl_like):
    cm, mods, ids = sdxl_like
    seen = []

    def evict_largest(candidates, need):
        seen.append(([c.component_id for c in candidates], need))
        return [max(candidates, key=lambda c: c.size_bytes)]

    cm.enable_auto_cpu_offload(device="cpu", memory_reserve_margin=0, max_memory=UNET + TE2, offload_policy=evict_largest)
    _run(mods, steps=1)
    # candidates arrive least recently used first, with the bytes that must be freed
    assert seen[0] == ([ids["text_encoder"], ids["text_encoder_2"]], TE1 + TE2 + UNET - (UNET + TE2))
    assert ("evict", "text_encoder_2") in _events(cm, ids)

    cm.set_offload_policy(lambda candidates, need: [OffloadCandidate("ghost", torch.nn.Identity(), 1, 0)])
    with pytest.raises(ValueError, match="returned 'ghost', which was not among the candidates"):
        _run(mods, steps=1)


def test_two_pipelines_sharing_a_manager_with_add_and_remove():
    cm = ComponentsManager()
    te, vae = _linear(16, 0), TinyVAE()
    unet_a, unet_b, unet_c = _linear(64, 1), _linear(64, 2), _linear(64, 3)
    ids = {
        "te": cm.add("text_encoder", te, collection="a"),
        "vae": cm.add("vae", vae, collection="a"),
        "unet_a": cm.add("unet", unet_a, collection="a"),
    }
    cm.add("text_encoder", te, collection="b")  # shared by both pipelines
    cm.add("vae", vae, collection="b")
    ids["unet_b"] = cm.add("unet", unet_b, collection="b")
    pipe_a = cm.get_components_by_names(["text_encoder", "unet", "vae"], collection="a")
    pipe_b = cm.get_components_by_names(["text_encoder", "unet", "vae"], collection="b")
    assert pipe_a["unet"] is unet_a and pipe_b["unet"] is unet_b and pipe_b["vae"] is vae

    def run(p):
        p["text_encoder"](torch.ones(1, 16))
        x = p["unet"](p["unet"](torch.ones(1, 64)))
        return p["vae"].decode(x[:, :16])

    expected_b = run(pipe_b)
    cm.enable_auto_cpu_offload(device="cpu", memory_reserve_margin=0, max_memory=UNET + TE1 + VAE)
    run(pipe_a)
    assert _events(cm, ids) == [("load", "te"), ("load", "unet_a"), ("load", "vae")]
    cm.auto_offload.events.clear()
    torch.testing.assert_close(run(pipe_b), expected_b, rtol=0, atol=0)
    # te and vae are already resident; unet_b needs all of unet_a's room, and unet_a is least recent
    assert _events(cm, ids) == [("evict", "unet_a"), ("load", "unet_b")]

    # remove unet_b while enabled: it is unwrapped and no longer counts against the budget
    cm.auto_offload.events.clear()
    cm.remove(ids["unet_b"])
    assert "forward" not in unet_b.__dict__ and not cm.auto_offload.is_attached(ids["unet_b"])
    unet_b(torch.ones(1, 64))  # a plain module again: no offload events
    assert _events(cm, ids) == []
    # add a new unet to pipeline b while enabled: managed from the start, loads into the freed room
    ids["unet_c"] = cm.add("unet", unet_c, collection="b")
    assert cm.get_model_info(ids["unet_c"], ["has_hook", "resident"]) == {"has_hook": True, "resident": False}
    pipe_b = cm.get_components_by_names(["text_encoder", "unet", "vae"], collection="b")
    run(pipe_b)
    assert _events(cm, ids) == [("load", "unet_c")]
    assert "(resident, exec cpu)" in repr(cm) and "(offloaded, exec cpu)" in repr(cm)
    assert "budget" in repr(cm).splitlines()[0]


def test_nested_entry_points_load_once(sdxl_like):
    cm, mods, ids = sdxl_like
    vae = mods["vae"]
    expected = vae(torch.ones(1, 16))
    cm.enable_auto_cpu_offload(device="cpu", memory_reserve_margin=0, max_memory="1MB")
    torch.testing.assert_close(vae(torch.ones(1, 16)), expected, rtol=0, atol=0)
    assert _events(cm, ids) == [("load", "vae")]


class FlakyUNet(torch.nn.Linear):
    """Runs out of memory (as a device would) for its next `failures` calls."""

    def __init__(self):
        torch.manual_seed(2)
        super().__init__(64, 64, bias=False)
        self.failures = 0

    def forward(self, x):
        if self.failures:
            self.failures -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().forward(x)


def test_oom_retries_once_with_everything_else_evicted(caplog):
    cm = ComponentsManager()
    te, vae, unet = _linear(16, 0), TinyVAE(), FlakyUNet()
    ids = {"text_encoder": cm.add("text_encoder", te), "vae": cm.add("vae", vae), "unet": cm.add("unet", unet)}
    expected = unet(torch.ones(1, 64))
    cm.enable_auto_cpu_offload(device="cpu", memory_reserve_margin=0, max_memory="1MB")
    te(torch.ones(1, 16))
    vae.encode(torch.ones(1, 16))
    unet.failures = 1
    with caplog.at_level(logging.WARNING, logger="diffblocks.components.offload"):
        out = unet(torch.ones(1, 64))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert _events(cm, ids) == [
        ("load", "text_encoder"),
        ("load", "vae"),
        ("load", "unet"),
        ("evict", "text_encoder"),
        ("evict", "vae"),
        ("oom_retry", "unet"),
    ]
    assert "retrying once" in caplog.text

    unet.failures = 2  # fails on the retry too: an actionable error
    with pytest.raises(torch.OutOfMemoryError) as err:
        unet(torch.ones(1, 64))
    msg = str(err.value)
    assert ids["unet"] in msg and "even with every other managed model" in msg and "set_partial" in msg


def test_vae_decode_falls_back_to_tiling(sdxl_like):
    cm, mods, ids = sdxl_like
    vae = mods["vae"]
    expected = vae.decode(torch.ones(1, 16))
    cm.enable_auto_cpu_offload(device="cpu", memory_reserve_margin=0, max_memory="1MB")
    vae.fail_untiled = 2  # the first try and the retry run out of memory untiled
    torch.testing.assert_close(vae.decode(torch.ones(1, 16)), expected, rtol=0, atol=0)
    assert [k for k, _ in cm.auto_offload.events] == ["load", "oom_retry", "tiling"]
    assert vae.use_tiling is False  # restored


def test_partial_offload_streams_largest_submodules():
    cm = ComponentsManager()
    torch.manual_seed(0)
    big = torch.nn.Sequential(
        torch.nn.Linear(8, 32, bias=False),  # 1024 B
        torch.nn.Linear(32, 64, bias=False),  # 8192 B
        torch.nn.Linear(64, 16, bias=False),  # 4096 B
        torch.nn.Linear(16, 8, bias=False),  # 512 B
    )
    expected = big(torch.ones(2, 8))
    cid = cm.add("unet", big)
    cm.enable_auto_cpu_offload(device="cpu", memory_reserve_margin=0, max_memory="1MB", partial={"unet": 2000})
    entry = cm.auto_offload._by_cid[cid]
    # largest first until the rest fits in 2000 bytes: 8192, 4096 -> 1536 left resident
    assert set(entry.streamed) == {id(big[1]), id(big[2])}
    assert entry.device_bytes == 1024 + 512
    torch.testing.assert_close(big(torch.ones(2, 8)), expected, rtol=0, atol=0)
    assert cm.auto_offload.resident_bytes() == 1536
    cm.auto_offload.set_partial(cid, None)
    assert entry.streamed == {} and cm.auto_offload.resident_bytes() == 0
    torch.testing.assert_close(big(torch.ones(2, 8)), expected, rtol=0, atol=0)
    assert cm.auto_offload.resident_bytes() == module_memory_bytes(big)


def test_disable_unwraps_everything(sdxl_like):
    cm, mods, ids = sdxl_like
    cm.enable_auto_cpu_offload(device="cpu", memory_reserve_margin=0, max_memory="1MB")
    assert "forward" in mods["unet"].__dict__ and "decode" in mods["vae"].__dict__
    _run(mods)
    cm.disable_auto_cpu_offload()
    assert cm.auto_offload is None
    for m in mods.values():
        assert not {"forward", "encode", "decode"} & set(m.__dict__)
    assert cm.get_model_info(ids["unet"], "has_hook") == {"has_hook": False}
    with pytest.raises(RuntimeError, match="not enabled"):
        cm.set_offload_policy(lru_size_aware_policy)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_cuda_real_moves_and_identical_outputs(sdxl_like):
    cm, mods, ids = sdxl_like
    reference = _run(mods)
    cm.enable_auto_cpu_offload(device="cuda", memory_reserve_margin=0, max_memory=UNET + VAE)
    assert all(p.device.type == "cpu" for m in mods.values() for p in m.parameters())
    out = _run(mods)  # inputs are created on the CPU and moved by the hooks
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), reference, rtol=1e-5, atol=1e-6)
    assert mods["unet"].weight.device.type == "cuda" and mods["text_encoder_2"].weight.device.type == "cpu"
    assert cm.get_model_info(ids["unet"], "device") == {"device": "cuda:0"}


@needs_cuda
def test_cuda_partial_offload_streams():
    torch.manual_seed(0)
    big = torch.nn.Sequential(torch.nn.Linear(8, 256), torch.nn.GELU(), torch.nn.Linear(256, 8))
    expected = big(torch.ones(2, 8))
    cm = ComponentsManager()
    cm.add("unet", big)
    cm.enable_auto_cpu_offload(device="cuda", memory_reserve_margin=0, partial={"unet": 0})
    out = big(torch.ones(2, 8))
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-6)
    assert all(p.device.type == "cpu" for p in big.parameters())  # streamed back after each call
