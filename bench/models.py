"""Forward-time ratio ours / reference (diffusers) for the UNet and the VAE on CPU.

Both models use the same weights and inputs; 1 torch thread; runs alternate between the two (order flipped every
round) so machine noise hits both alike; medians and the p25-p75 of the per-round ratio.
Prints one line per case; ratios below 1.0 mean we are faster.

    python bench/models.py [--repeats 5] [--skip-full]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch


def _shared_weights(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(32 << 20, generator=gen)
    vectors = torch.randn(1 << 16, generator=gen) * 0.1
    pools: dict[int, torch.Tensor] = {}
    weights = {}
    for i, (name, p) in enumerate(model.named_parameters()):
        if p.ndim >= 2:
            k = round(math.log2(p[0].numel() ** -0.5))
            if k not in pools:
                pools[k] = base * 2.0**k
            pool = pools[k]
        else:
            pool = vectors + 1.0 if "norm" in name and name.endswith("weight") else vectors
        offset = (i * 7919) % (pool.numel() - p.numel() + 1)
        weights[name] = pool[offset:offset + p.numel()].view(p.shape).clone()
    return weights


def _pair(kind: str, config: dict, seed: int = 0):
    import diffusers
    from accelerate import init_empty_weights

    import diffblocks.components.models as ours_models

    with init_empty_weights():
        ref = getattr(diffusers, kind)(**config)
        ours = getattr(ours_models, kind).from_config(config)
    weights = _shared_weights(ref, seed)
    ref.load_state_dict(weights, assign=True)
    ours.load_state_dict({k: v.clone() for k, v in weights.items()}, assign=True)
    return ref.eval(), ours.eval()


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def _compare(name: str, ref_fn, ours_fn, repeats: int) -> None:
    with torch.no_grad():
        ref_fn(), ours_fn()  # warm-up
        ref_t, ours_t = [], []
        for r in range(repeats):  # interleaved, order flipped every round
            if r % 2:
                ours_t += _time(ours_fn, 1)
                ref_t += _time(ref_fn, 1)
            else:
                ref_t += _time(ref_fn, 1)
                ours_t += _time(ours_fn, 1)
    r, o = statistics.median(ref_t), statistics.median(ours_t)
    ratios = sorted(a / b for a, b in zip(ours_t, ref_t))
    lo, hi = (statistics.quantiles(ratios, n=4)[0::2] if len(ratios) > 1 else (ratios[0], ratios[0]))
    print(f"{name:<40} ours {o * 1e3:9.2f} ms   reference {r * 1e3:9.2f} ms   ratio {o / r:5.3f} "
          f"(p25-p75 of rounds {lo:.3f}-{hi:.3f})")


def main() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from model_fixtures import SD15_UNET, SD15_UNET_FULL, SD_VAE, SD_VAE_FULL, unet_inputs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-full", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # 2 shared cores: more threads than that make runs swing with others' load
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")

    cases = [("UNet tiny SD1.5-like, 2x4x32x32", SD15_UNET, 32, 2, 3)]
    if not args.skip_full:
        cases.append(("UNet full SD1.5 config, 1x4x16x16", SD15_UNET_FULL, 16, 1, 1))
    for name, config, size, batch, seed in cases:
        ref, ours = _pair("UNet2DConditionModel", config, seed)
        inputs = unet_inputs(config, batch=batch, size=size, seq=77)
        _compare(name, lambda r=ref, i=inputs: r(**i), lambda o=ours, i=inputs: o(**i), args.repeats)
        del ref, ours

    vae_cases = [("VAE tiny, decode 1x4x32x32", SD_VAE, 32)]
    if not args.skip_full:
        vae_cases.append(("VAE full SD config, decode 1x4x16x16", SD_VAE_FULL, 16))
    for name, config, size in vae_cases:
        ref, ours = _pair("AutoencoderKL", config, 4)
        z = torch.randn(1, config["latent_channels"], size, size, generator=torch.Generator().manual_seed(0))
        _compare(name, lambda r=ref, z=z: r.decode(z), lambda o=ours, z=z: o.decode(z), args.repeats)
        x = torch.randn(1, 3, size * 4, size * 4, generator=torch.Generator().manual_seed(1))
        _compare(name.replace(f"decode 1x4x{size}x{size}", f"encode 1x3x{size * 4}x{size * 4}"),
                 lambda r=ref, x=x: r.encode(x), lambda o=ours, x=x: o.encode(x), args.repeats)


if __name__ == "__main__":
    main()
