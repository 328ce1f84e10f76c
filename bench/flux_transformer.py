"""Flux transformer step time: diffblocks vs the reference (diffusers) on the same weights.

A FLUX.1-dev-sized transformer (19 double + 38 single blocks, hidden 3072, guidance embeddings) with random
weights in bf16, one denoiser call at 1024x1024 (4096 image tokens, 512 text tokens, batch 1). Both models share
the same weight tensors. Rows: eager, and compiled (`torch.compile` of every transformer block, the regional
compilation the reference recommends, applied to both models alike). Times are medians of CUDA-event timings,
the two models interleaved; the ratio is ours / reference (below 1 is faster). Needs CUDA; `--smoke` runs a tiny
config on the CPU to check the script.

    python bench/flux_transformer.py [--size 1024] [--iters 10] [--no-compile] [--smoke]
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLUX_DEV = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}
SMOKE = {**FLUX_DEV, "in_channels": 8, "num_layers": 2, "num_single_layers": 2, "attention_head_dim": 16,
         "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 16, "axes_dims_rope": [4, 6, 6]}


def build_models(config: dict[str, Any], device: torch.device, dtype: torch.dtype):
    """The reference with random weights, and ours holding the same tensors."""
    import diffusers

    from diffblocks.components.models.flux_transformer import FluxTransformer2DModel

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            ref = diffusers.FluxTransformer2DModel(**copy.deepcopy(config)).eval()
    finally:
        torch.set_default_dtype(previous)
    with torch.device("meta"):
        ours = FluxTransformer2DModel.from_config(config)
    ours.load_state_dict(ref.state_dict(), assign=True)
    return ours.eval(), ref


def make_inputs(config: dict[str, Any], size: int, text_len: int, device: torch.device, dtype: torch.dtype):
    side = size // 16  # VAE /8, then 2x2 packing
    gen = torch.Generator(device="cpu").manual_seed(1)
    img_ids = torch.zeros(side * side, 3)
    img_ids[:, 1] = torch.arange(side).repeat_interleave(side)
    img_ids[:, 2] = torch.arange(side).repeat(side)
    inputs = {
        "hidden_states": torch.randn(1, side * side, config["in_channels"], generator=gen),
        "encoder_hidden_states": torch.randn(1, text_len, config["joint_attention_dim"], generator=gen),
        "pooled_projections": torch.randn(1, config["pooled_projection_dim"], generator=gen),
        "timestep": torch.tensor([0.7]),
        "img_ids": img_ids,
        "txt_ids": torch.zeros(text_len, 3),
        "guidance": torch.tensor([3.5]),
    }
    return {k: v.to(device=device, dtype=dtype if v.is_floating_point() and not k.endswith("_ids") else v.dtype)
            for k, v in inputs.items()}


def compile_blocks(model: torch.nn.Module) -> None:
    for stack in (model.transformer_blocks, model.single_transformer_blocks):
        for block in stack:
            block.compile(fullgraph=True)


def time_models(models: dict[str, torch.nn.Module], inputs: dict[str, Any], iters: int, warmup: int,
                device: torch.device) -> dict[str, float]:
    """Median milliseconds per call of each model, interleaving the models call by call."""
    cuda = device.type == "cuda"
    samples: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                model(**inputs)
        for _ in range(iters):
            for name, model in models.items():
                if cuda:
                    torch.cuda.synchronize()
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    model(**inputs)
                    end.record()
                    torch.cuda.synchronize()
                    samples[name].append(start.elapsed_time(end))
                else:
                    t0 = time.perf_counter()
                    model(**inputs)
                    samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--text-len", type=int, default=512)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny config on the CPU (checks the script)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    log = logging.getLogger("bench.flux")

    if args.smoke:
        config, device, dtype = SMOKE, torch.device("cpu"), torch.float32
        args.size, args.text_len = min(args.size, 128), min(args.text_len, 16)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("bench/flux_transformer.py needs a CUDA device (use --smoke to check it on the CPU).")
        config, device, dtype = FLUX_DEV, torch.device("cuda"), torch.bfloat16
        torch.backends.cuda.matmul.allow_tf32 = True
        log.info("device: %s, torch %s", torch.cuda.get_device_name(), torch.__version__)

    ours, ref = build_models(config, device, dtype)
    inputs = make_inputs(config, args.size, args.text_len, device, dtype)
    log.info("config: %d double + %d single blocks, hidden %d, %s; %dx%d -> %d image + %d text tokens",
             config["num_layers"], config["num_single_layers"],
             config["num_attention_heads"] * config["attention_head_dim"], dtype, args.size, args.size,
             inputs["hidden_states"].shape[1], args.text_len)

    with torch.inference_mode():
        a, b = ours(**inputs).sample.float(), ref(**inputs).sample.float()
    log.info("max |ours - ref| / max |ref| (eager, %s): %.3e", dtype, ((a - b).abs().max() / b.abs().max()).item())

    rows = []
    eager = time_models({"ours": ours, "ref": ref}, inputs, args.iters, args.warmup, device)
    rows.append(("eager", eager["ours"], eager["ref"]))
    log.info("eager: ours %.2f ms, ref %.2f ms, ratio %.3f", eager["ours"], eager["ref"], eager["ours"] / eager["ref"])

    if not args.no_compile:
        for name, model in (("ours", ours), ("ref", ref)):
            t0 = time.perf_counter()
            compile_blocks(model)
            with torch.inference_mode():
                model(**inputs)
            log.info("compiled %s blocks in %.0f s", name, time.perf_counter() - t0)
        with torch.inference_mode():
            a, b = ours(**inputs).sample.float(), ref(**inputs).sample.float()
        log.info("max |ours - ref| / max |ref| (compiled): %.3e", ((a - b).abs().max() / b.abs().max()).item())
        compiled = time_models({"ours": ours, "ref": ref}, inputs, args.iters, args.warmup, device)
        rows.append(("compiled (blocks)", compiled["ours"], compiled["ref"]))
        log.info("compiled: ours %.2f ms, ref %.2f ms, ratio %.3f", compiled["ours"], compiled["ref"],
                 compiled["ours"] / compiled["ref"])

    table = ["| mode | ours (ms) | reference (ms) | ours / reference |", "| --- | --- | --- | --- |"]
    table += [f"| {mode} | {o:.2f} | {r:.2f} | {o / r:.3f} |" for mode, o, r in rows]
    sys.stdout.write("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
