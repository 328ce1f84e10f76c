"""Training-step speed and peak memory: our training block graph vs the same step on the reference's models.

One step = sample noise + timesteps, add_noise, UNet forward, MSE loss, backward, optimizer step (batch 1,
latents and text embeddings given, random weights). "ours" runs diffblocks' training blocks (sample_noise ->
add_noise -> predict -> target -> loss -> optimize) on our UNet and DDPMScheduler through accelerate;
"reference" is the diffusers script's step written out on diffusers' UNet2DConditionModel and DDPMScheduler.
Each (side, case) runs in its own subprocess, alternating sides, so peak RSS belongs to one side only.

    python bench/training.py [--repeats 2] [--steps 4] [--sdxl] [--full] [--cases tiny,sdxl,full] [--device cpu|cuda]

`--sdxl` adds the tiny SDXL-shaped UNet (text_time conditioning): ours runs the SDXL graph's time_ids block too
(pooled embeddings + original size / crop / target size -> add_time_ids), the reference the SDXL script's
compute_time_ids.

The full-size SD 1.5 config uses SGD (no optimizer state) on CPU so it fits a 24 GB machine; the tiny one AdamW.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(side: str, case: str, steps: int, device: str) -> dict:
    import resource

    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from model_fixtures import SD15_UNET, SD15_UNET_FULL, SDXL_TEXT_EMBED_DIM, SDXL_UNET

    torch.manual_seed(0)
    config, size = {"full": SD15_UNET_FULL, "sdxl": SDXL_UNET}.get(case, SD15_UNET), 64
    cross = config["cross_attention_dim"]
    sched_cfg = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    if side == "ours":
        from diffblocks.components.models import UNet2DConditionModel
        from diffblocks.components.schedulers import DDPMScheduler
    else:
        from diffusers import DDPMScheduler, UNet2DConditionModel
    unet = UNet2DConditionModel(**config) if side == "reference" else UNet2DConditionModel.from_config(config)
    unet.to(device).train()
    scheduler = DDPMScheduler(**sched_cfg)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = (torch.optim.SGD(params, lr=1e-5) if case == "full"
                 else torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2))
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, size, size, generator=gen).to(device)
    embeds = torch.randn(1, 77, cross, generator=gen).to(device)
    xl = case == "sdxl"
    pooled = torch.randn(1, SDXL_TEXT_EMBED_DIM, generator=gen).to(device) if xl else None
    pixels = size * 8  # the size the latents stand for: original and target size of the time ids

    if side == "ours":
        from accelerate import Accelerator

        from diffblocks.blocks import PipelineState, SequentialPipelineBlocks
        from diffblocks.blocks.base import ComponentsNamespace
        from diffblocks.training import SDXL_TEXT2IMAGE_TRAIN_BLOCKS, TEXT2IMAGE_TRAIN_BLOCKS

        acc = Accelerator(cpu=device == "cpu")
        unet, optimizer = acc.prepare(unet, optimizer)
        graph = SDXL_TEXT2IMAGE_TRAIN_BLOCKS if xl else TEXT2IMAGE_TRAIN_BLOCKS
        blocks = SequentialPipelineBlocks.from_blocks_dict(
            {k: v for k, v in graph.items() if k not in ("text_encoder", "vae_encoder")})
        comps = ComponentsNamespace({"unet": unet, "noise_scheduler": scheduler, "vae": None})
        extra = dict(pooled_prompt_embeds=pooled, original_sizes=[(pixels, pixels)],
                     crop_top_lefts=[(0, 0)]) if xl else {}

        def step():
            state = PipelineState()
            for k, v in dict(image_latents=latents, prompt_embeds=embeds, generator=gen, accelerator=acc,
                             optimizer=optimizer, params_to_clip=params, max_grad_norm=1.0, **extra).items():
                state.set(k, v)
            blocks(comps, state)
    else:
        import torch.nn.functional as F

        def step():  # train_text_to_image(_sdxl).py's inner step
            noise = torch.randn(latents.shape, generator=gen).to(device)
            timesteps = torch.randint(0, 1000, (1,), generator=gen).to(device)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            kwargs = {}
            if xl:  # compute_time_ids: original_size + crops_coords_top_left + target_size
                time_ids = torch.tensor([[pixels, pixels, 0, 0, pixels, pixels]], device=device, dtype=pooled.dtype)
                kwargs["added_cond_kwargs"] = {"time_ids": time_ids, "text_embeds": pooled}
            pred = unet(noisy, timesteps, embeds, return_dict=False, **kwargs)[0]
            loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up (allocates grads and optimizer state)
    times, cpu_times = [], []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    # CPU time of this process: on a shared, loaded machine it moves far less than wall time
    return {"step_s": statistics.median(times), "spread": max(times) - min(times), "peak_mb": peak,
            "cpu_s": statistics.median(cpu_times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="subprocess runs per side (alternating)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run (after one warm-up)")
    parser.add_argument("--full", action="store_true", help="also the full-size SD 1.5 UNet config (~10 GB)")
    parser.add_argument("--sdxl", action="store_true", help="also the tiny SDXL-shaped UNet (time-id conditioning)")
    parser.add_argument("--cases", help="comma-separated cases to run instead (tiny, sdxl, full)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args._child:
        print(json.dumps(_child(args._child[0], args._child[1], args.steps, args.device)))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.device}; batch 1, 64x64 latents")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    cases = args.cases.split(",") if args.cases else \
        ["tiny"] + (["sdxl"] if args.sdxl else []) + (["full"] if args.full else [])
    for case in cases:
        results: dict[str, list[dict]] = {"ours": [], "reference": []}
        for _ in range(args.repeats):
            for side in ("reference", "ours"):
                out = subprocess.run([sys.executable, __file__, "--_child", side, case, "--steps", str(args.steps),
                                      "--device", args.device, "--threads", str(args.threads)],
                                     env=env, capture_output=True, text=True, check=True)
                results[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
        row = {}
        for side, runs in results.items():
            row[side] = (statistics.median(r["step_s"] for r in runs), max(r["step_s"] for r in runs)
                         - min(r["step_s"] for r in runs), statistics.median(r["peak_mb"] for r in runs),
                         statistics.median(r["cpu_s"] for r in runs))
        (o, os_, om, oc), (r, rs, rm, rc) = row["ours"], row["reference"]
        print(f"UNet {case:<4} step: ours {1 / o:7.3f} steps/s ({o * 1e3:8.1f} ms +-{os_ * 5e2:.0f}), reference "
              f"{1 / r:7.3f} steps/s ({r * 1e3:8.1f} ms +-{rs * 5e2:.0f}); time ratio {o / r:5.3f}; CPU time "
              f"ours {oc * 1e3:.1f} ms, reference {rc * 1e3:.1f} ms, ratio {oc / rc:5.3f}; peak memory "
              f"ours {om:7.0f} MB, reference {rm:7.0f} MB")


if __name__ == "__main__":
    main()
