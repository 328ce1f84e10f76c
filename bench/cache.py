"""Block output cache: re-running a pipeline with only a new seed, cached vs uncached, side by side.

For SD-tiny and SDXL-tiny (tests/fixtures_sd.py folders, seeded random weights), SD-tiny with a CLIP-L-sized
text encoder, and image-to-image on SD-tiny, two pipelines are loaded from the same folder, one with
`enable_block_cache()`; each round calls both (order alternating) with a fresh seed, so the cached one reuses
the text encoding (and, for image-to-image, the init image's VAE encode) and everything else runs. Before timing,
both must return identical images for the same seed. One thread, garbage collector paused while timing; median
and spread (min-max) of the per-call CPU seconds of the process (`time.process_time`: with one torch thread this
is the call's work, and time the shared machine gives to other jobs is not counted). The cached share is the time the uncached call spends in the blocks
the cached call takes from the cache (measured through progress handlers, by block path); the speedup is bounded
by 1 / (1 - share).

    python bench/cache.py [--quick] [--steps 20] [--update-results]

`--update-results` rewrites the "## cache" section of bench/RESULTS.md (other sections untouched).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from results import update_section  # noqa: E402  (bench/results.py)


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.disable(logging.WARNING)


def _sd_with_clip_l(root: Path) -> Path:
    """The SD-tiny folder with a text encoder of CLIP ViT-L/14's size (12 layers, width 768, 123M parameters;
    seeded random weights; the fixture tokenizer's 16-token sequences), so text encoding is a real share."""
    import torch
    from fixtures_sd import MAX_LENGTH, build_sd15
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = build_sd15(root, name="sd15-clip-l", cross_attention_dim=768)
    config = CLIPTextConfig(vocab_size=84, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=MAX_LENGTH, bos_token_id=82,
                            eos_token_id=83, pad_token_id=83, projection_dim=768, hidden_act="quick_gelu")
    torch.manual_seed(0)
    CLIPTextModel(config).eval().save_pretrained(str(folder / "text_encoder"))
    return folder


def run(steps: int, rounds: int) -> list[dict]:
    import torch
    from fixtures_sd import build_sd15, build_sdxl, test_image

    from diffblocks import ModularPipeline

    torch.set_num_threads(1)
    img2img = {"image": test_image(64), "strength": 0.6, "height": 64, "width": 64}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build, extra in (("SD-tiny", build_sd15, {}), ("SDXL-tiny", build_sdxl, {}),
                                   ("SD-tiny, CLIP-L-sized text encoder", _sd_with_clip_l, {}),
                                   ("SD-tiny img2img (strength 0.6, 64 px)", build_sd15, img2img),
                                   ("SD-tiny img2img, CLIP-L-sized text encoder", _sd_with_clip_l, img2img)):
            folder = build(Path(tmp) / name.replace(" ", "_").replace(",", ""))
            pipes = {}
            for kind in ("uncached", "cached"):
                pipe = ModularPipeline.from_pretrained(str(folder))
                pipe.load_components()
                pipe.set_progress_bar_config(disable=True)
                pipes[kind] = pipe
            pipes["cached"].enable_block_cache()
            share: list[float] = []
            seconds: dict[str, float] = {}  # block path -> seconds, uncached pipeline's last call
            hit: set[str] = set()  # block paths the cached pipeline took from the cache

            def record(event, seconds=seconds):
                if event.kind == "block_end":
                    seconds[event.path] = event.seconds

            def hits(event, hit=hit):
                if event.kind == "block_end" and event.cached:
                    hit.add(event.path)

            pipes["uncached"].add_progress_handler(record)
            pipes["cached"].add_progress_handler(hits)
            kwargs = {"prompt": "a red cat on a blue background", "negative_prompt": "ugly, blurry",
                      "num_inference_steps": steps, "output": "images", "output_type": "np", **extra}

            def call(kind: str, seed: int, pipes=pipes, kwargs=kwargs):
                return pipes[kind](**kwargs, generator=torch.Generator().manual_seed(seed))

            a, b = call("uncached", 0), call("cached", 0)
            assert (a == b).all(), "cached and uncached images differ"
            samples: dict[str, list[float]] = {"uncached": [], "cached": []}
            gc.collect()
            gc.disable()
            try:
                for r in range(rounds):
                    order = ["uncached", "cached"] if r % 2 == 0 else ["cached", "uncached"]
                    for kind in order:
                        if kind == "cached":
                            hit.clear()
                        start = time.process_time()
                        image = call(kind, r + 1)
                        samples[kind].append(time.process_time() - start)
                        if r == 0:  # the same seed: the same image from both
                            reference = call("uncached" if kind == "cached" else "cached", r + 1)
                            assert (image == reference).all(), "cached and uncached images differ"
                    total = seconds[type(pipes["uncached"].blocks).__name__]
                    share.append(sum(seconds[p] for p in hit) / total)
            finally:
                gc.enable()
            info = pipes["cached"].block_cache_info()
            med = {k: statistics.median(v) for k, v in samples.items()}
            rows.append({"name": name, "steps": steps, "uncached": med["uncached"], "cached": med["cached"],
                         "spread": {k: (min(v), max(v)) for k, v in samples.items()},
                         "speedup": med["uncached"] / med["cached"], "share": statistics.median(share),
                         "cached_blocks": sorted(p.split(".", 1)[-1] for p in hit),
                         "hits": info.hits, "misses": info.misses, "bytes": info.bytes})
            print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["| pipeline | steps | uncached CPU s (min-max) | cached CPU s (min-max) | speedup | cached share | bound "
             "1/(1-share) | blocks from the cache |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        (ul, uh), (cl, ch) = r["spread"]["uncached"], r["spread"]["cached"]
        lines.append(f"| {r['name']} | {r['steps']} | {r['uncached']:.3f} ({ul:.3f}-{uh:.3f}) | "
                     f"{r['cached']:.3f} ({cl:.3f}-{ch:.3f}) | {r['speedup']:.2f}x | {100 * r['share']:.1f}% | "
                     f"{1 / (1 - r['share']):.2f}x | {', '.join(r['cached_blocks'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 9")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--update-results", action="store_true")
    args = parser.parse_args()
    _quiet()
    rows = run(args.steps, 3 if args.quick else 9)
    table = format_rows(rows)
    print(table)
    if args.update_results:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        section = (f"`python bench/cache.py` ({datetime.date.today()}, commit {commit}, "
                   f"{platform.processor() or platform.machine()}, CPU, 1 thread, CPU time; GPU not run). Re-run with "
                   f"only a "
                   f"new seed, block cache on vs off, interleaved, median of {3 if args.quick else 9} rounds; "
                   f"images identical. The cache saves the blocks listed (text encoding; for image-to-image also the "
                   f"init image's VAE encode), so the gain is bounded by their share of the uncached call: "
                   f"1 / (1 - share).\n\n{table}\n")
        update_section("cache", section)


if __name__ == "__main__":
    main()
