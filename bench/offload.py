"""Auto CPU offload benchmark: peak GPU memory and time of an SDXL-shaped text-to-image run.

Full-size SDXL configs (UNet, VAE, both CLIP text encoders) with random weights in fp16, 1024x1024,
10 Euler steps with classifier-free guidance (batch 2). The workflow is written out here (encoders
once, the UNet every step, VAE decode at the end) and run under each placement:

  ref resident       diffusers models, everything on the GPU
  ref model offload  diffusers models with the reference's `enable_model_cpu_offload` hooks
                     (accelerate, installed by a StableDiffusionXLPipeline holding the same models)
  ours resident      diffblocks models (same weights), everything on the GPU
  ours auto          diffblocks ComponentsManager auto offload, default margin (3GB), real free memory
  ours auto tight    auto offload with a device budget equal to the reference offload's peak and a
                     margin that leaves room for one UNet: a small GPU, one large model at a time

"cold" is the first call after enabling (all models on the CPU); "warm" the mean of the next calls.
Ratios are against `ref model offload`. Needs CUDA; `--smoke` runs tiny configs on the CPU (no
reference offload, simulated budget) to check the script itself.

    python bench/offload.py [--steps 10] [--size 1024] [--runs 2] [--smoke]
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SDXL_UNET = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "cross_attention_dim": 2048,
    "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True, "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
}
SDXL_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 1024, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "norm_num_groups": 32, "scaling_factor": 0.13025,
}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "projection_dim": 768, "hidden_act": "quick_gelu", "vocab_size": 49408, "max_position_embeddings": 77}
CLIP_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
          "projection_dim": 1280, "hidden_act": "gelu", "vocab_size": 49408, "max_position_embeddings": 77}

TINY_UNET = {
    **SDXL_UNET, "sample_size": 8, "cross_attention_dim": 32, "attention_head_dim": [2, 4], "block_out_channels": [32, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2], "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 64,
    "layers_per_block": 1,
}
TINY_VAE = {**SDXL_VAE, "block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2, "layers_per_block": 1, "sample_size": 64}
TINY_CLIP_L = {**CLIP_L, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
               "projection_dim": 16, "vocab_size": 1000, "bos_token_id": 0, "eos_token_id": 2}
TINY_CLIP_G = {**CLIP_G, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
               "projection_dim": 16, "vocab_size": 1000, "bos_token_id": 0, "eos_token_id": 2}


def build_reference(smoke: bool, dtype: torch.dtype, init_device: str) -> dict[str, torch.nn.Module]:
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    with torch.device(init_device):
        models = {
            "text_encoder": CLIPTextModel(CLIPTextConfig(**(TINY_CLIP_L if smoke else CLIP_L))),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**(TINY_CLIP_G if smoke else CLIP_G))),
            "unet": diffusers.UNet2DConditionModel(**(TINY_UNET if smoke else SDXL_UNET)),
            "vae": diffusers.AutoencoderKL(**(TINY_VAE if smoke else SDXL_VAE)),
        }
    return {k: m.to("cpu", dtype).eval().requires_grad_(False) for k, m in models.items()}


def build_ours(reference: dict[str, torch.nn.Module], dtype: torch.dtype) -> dict[str, torch.nn.Module] | None:
    """diffblocks UNet/VAE loaded from the reference's saved weights; text encoders are transformers' in both."""
    try:
        from diffblocks.components.models import AutoencoderKL, UNet2DConditionModel
    except ImportError as err:
        logging.warning("diffblocks models not importable (%s); 'ours' rows use the reference models", err)
        return None
    ours = {"text_encoder": reference["text_encoder"], "text_encoder_2": reference["text_encoder_2"]}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
            reference[name].save_pretrained(f"{tmp}/{name}")
            ours[name] = cls.from_pretrained(f"{tmp}/{name}", torch_dtype=dtype).eval().requires_grad_(False)
    return ours


class Workflow:
    """SDXL text-to-image written out: two text encoders, CFG denoise loop, VAE decode."""

    def __init__(self, size: int, steps: int, device: torch.device, dtype: torch.dtype, vocab: int, smoke: bool):
        from diffusers import EulerDiscreteScheduler

        self.scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                timestep_spacing="leading", steps_offset=1)
        self.steps, self.device, self.dtype = steps, device, dtype
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (2, 77), generator=gen)  # [uncond, cond]
        self.ids2 = torch.randint(0, vocab, (2, 77), generator=gen)
        latent = size // 8
        self.noise = torch.randn(1, 4, latent, latent, generator=gen)
        self.time_ids = torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=dtype)

    @torch.no_grad()
    def __call__(self, m: dict[str, torch.nn.Module]) -> torch.Tensor:
        dev = self.device
        h1 = m["text_encoder"](self.ids.to(dev), output_hidden_states=True).hidden_states[-2]
        out2 = m["text_encoder_2"](self.ids2.to(dev), output_hidden_states=True)
        embeds = torch.cat([h1, out2.hidden_states[-2]], dim=-1).to(self.dtype)
        cond = {"text_embeds": out2.text_embeds.to(self.dtype), "time_ids": self.time_ids.to(dev)}
        self.scheduler.set_timesteps(self.steps, device=dev)
        latents = self.noise.to(dev, self.dtype) * self.scheduler.init_noise_sigma
        for t in self.scheduler.timesteps:
            x = self.scheduler.scale_model_input(torch.cat([latents] * 2), t)
            pred = m["unet"](x, t, encoder_hidden_states=embeds, added_cond_kwargs=cond).sample
            uncond, text = pred.chunk(2)
            latents = self.scheduler.step(uncond + 7.5 * (text - uncond), t, latents).prev_sample
        vae = m["vae"]
        return vae.decode(latents / vae.config.scaling_factor).sample


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, run, device: torch.device, runs: int, after=None) -> dict[str, Any]:
    """Cold call (models start on the CPU) then `runs` warm calls; peak memory over all of them."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    image = None
    for _ in range(runs + 1):
        sync(device)
        start = time.perf_counter()
        image = run()
        if after is not None:
            after()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    result = {"name": name, "cold": times[0], "warm": statistics.mean(times[1:]), "peak": peak,
              "checksum": float(image.float().abs().mean())}
    logging.info("%-18s cold %.2fs warm %.2fs peak %.2f GiB", name, result["cold"], result["warm"], peak / 2**30)
    return result


def to_cpu(models: dict[str, torch.nn.Module]) -> None:
    for m in models.values():
        m.to("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=2, help="warm calls per mode (after one cold call)")
    parser.add_argument("--smoke", action="store_true", help="tiny configs on the CPU, to check the script")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("diffblocks.components.manager", "diffblocks.components.offload"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from diffblocks.components.manager import ComponentsManager
    from diffblocks.components.offload import module_memory_bytes

    if args.smoke:
        device, dtype, size = torch.device("cpu"), torch.float32, 64
    else:
        if not torch.cuda.is_available():
            sys.exit("bench/offload.py needs a CUDA GPU (use --smoke to check the script on a CPU)")
        device, dtype, size = torch.device("cuda", torch.cuda.current_device()), torch.float16, args.size
    init_device = "cuda" if device.type == "cuda" else "cpu"  # random init is much faster on the GPU

    ref = build_reference(args.smoke, dtype, init_device)
    ours = build_ours(ref, dtype) or ref
    vocab = ref["text_encoder"].config.vocab_size
    flow = Workflow(size, args.steps, device, dtype, vocab, args.smoke)
    sizes = {k: module_memory_bytes(m) for k, m in ref.items()}
    logging.info("device %s, %s, %dx%d, %d steps; model sizes: %s", torch.cuda.get_device_name(device)
                 if device.type == "cuda" else "cpu", dtype, size, size, args.steps,
                 {k: f"{v / 2**30:.2f} GiB" for k, v in sizes.items()})

    # warm up kernels once so the first mode does not pay for it
    for m in ref.values():
        m.to(device)
    flow(ref)
    sync(device)
    to_cpu(ref)

    results = []

    def resident(models, name):
        for m in models.values():
            m.to(device)
        results.append(measure(name, lambda: flow(models), device, args.runs))
        to_cpu(models)

    resident(ref, "ref resident")

    ref_offload_peak = None
    if device.type == "cuda":
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(vae=ref["vae"], text_encoder=ref["text_encoder"],
                                         text_encoder_2=ref["text_encoder_2"], tokenizer=None, tokenizer_2=None,
                                         unet=ref["unet"], scheduler=EulerDiscreteScheduler())
        pipe.enable_model_cpu_offload(device=device)
        # the pipeline's __call__ ends with maybe_free_model_hooks(), which offloads everything again
        results.append(measure("ref model offload", lambda: flow(ref), device, args.runs,
                               after=pipe.maybe_free_model_hooks))
        ref_offload_peak = results[-1]["peak"]
        pipe.remove_all_hooks()
        to_cpu(ref)
        del pipe

    if ours is not ref:
        resident(ours, "ours resident")

    def auto(name: str, **kwargs: Any) -> None:
        cm = ComponentsManager()
        for k, m in ours.items():
            cm.add(k, m, collection="bench")
        cm.enable_auto_cpu_offload(device=device, **kwargs)
        results.append(measure(name, lambda: flow(ours), device, args.runs))
        logging.info("%s", cm)
        cm.disable_auto_cpu_offload()

    if device.type == "cuda":
        auto("ours auto")
        tight = ref_offload_peak
        auto("ours auto tight", max_memory=tight, memory_reserve_margin=max(0, tight - sizes["unet"]))
    else:  # smoke: a simulated budget that holds one UNet
        auto("ours auto tight", max_memory=sizes["unet"] + sizes["vae"], memory_reserve_margin=0)

    base = next((r for r in results if r["name"] == "ref model offload"), results[0])
    print(f"\n{'mode':<18} {'cold s':>8} {'warm s':>8} {'peak GiB':>9} {'warm/ref':>9} {'peak/ref':>9}  checksum")
    for r in results:
        peak_ratio = r["peak"] / base["peak"] if base["peak"] else float("nan")
        print(f"{r['name']:<18} {r['cold']:>8.2f} {r['warm']:>8.2f} {r['peak'] / 2**30:>9.2f} "
              f"{r['warm'] / base['warm']:>9.3f} {peak_ratio:>9.3f}  {r['checksum']:.6f}")
    print(f"(ratios against '{base['name']}')")


if __name__ == "__main__":
    main()
