"""Block output cache: re-running a pipeline with only a new seed, cached vs uncached, side by side.

For SD-tiny and SDXL-tiny (tests/fixtures_sd.py folders, seeded random weights) two pipelines are loaded from the
same folder, one with `enable_block_cache()`; each round calls both (order alternating) with a fresh seed, so
the cached one reuses the text encoding and everything else runs. Before timing, both must return identical
images for the same seed. One thread, garbage collector paused while timing; median and spread (min-max) of
the per-call seconds. The text-encoding share is the text_encoder block's time over the whole call, measured
on the uncached pipeline through a progress handler.

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
import re
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
RESULTS = ROOT / "bench" / "RESULTS.md"


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
    from fixtures_sd import build_sd15, build_sdxl

    from diffblocks import ModularPipeline

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in (("SD-tiny", build_sd15), ("SDXL-tiny", build_sdxl),
                            ("SD-tiny, CLIP-L-sized text encoder", _sd_with_clip_l)):
            folder = build(Path(tmp))
            pipes = {}
            for kind in ("uncached", "cached"):
                pipe = ModularPipeline.from_pretrained(str(folder))
                pipe.load_components()
                pipe.set_progress_bar_config(disable=True)
                pipes[kind] = pipe
            pipes["cached"].enable_block_cache()
            share: list[float] = []
            blocks: dict[str, float] = {}

            def record(event, blocks=blocks):
                if event.kind == "block_end":
                    blocks[event.path.rsplit(".", 1)[-1]] = event.seconds

            pipes["uncached"].add_progress_handler(record)
            kwargs = {"prompt": "a red cat on a blue background", "negative_prompt": "ugly, blurry",
                      "num_inference_steps": steps, "output": "images", "output_type": "np"}

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
                        start = time.perf_counter()
                        call(kind, r + 1)
                        samples[kind].append(time.perf_counter() - start)
                        if kind == "uncached":
                            share.append(blocks["text_encoder"] / blocks[type(pipes[kind].blocks).__name__])
            finally:
                gc.enable()
            info = pipes["cached"].block_cache_info()
            med = {k: statistics.median(v) for k, v in samples.items()}
            rows.append({"name": name, "steps": steps, "uncached": med["uncached"], "cached": med["cached"],
                         "spread": {k: (min(v), max(v)) for k, v in samples.items()},
                         "speedup": med["uncached"] / med["cached"], "share": statistics.median(share),
                         "hits": info.hits, "misses": info.misses, "bytes": info.bytes})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["| pipeline | steps | uncached s (min-max) | cached s (min-max) | speedup | text-encoding share |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        (ul, uh), (cl, ch) = r["spread"]["uncached"], r["spread"]["cached"]
        lines.append(f"| {r['name']} | {r['steps']} | {r['uncached']:.3f} ({ul:.3f}-{uh:.3f}) | "
                     f"{r['cached']:.3f} ({cl:.3f}-{ch:.3f}) | {r['speedup']:.2f}x | {100 * r['share']:.1f}% |")
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
        section = (f"## cache\n\n`python bench/cache.py` ({datetime.date.today()}, commit {commit}, "
                   f"{platform.processor() or platform.machine()}, CPU, 1 thread; GPU not run). Re-run with only a "
                   f"new seed, block cache on vs off, interleaved, median of {3 if args.quick else 9} rounds; "
                   f"images identical. The cache saves the text encoding, so the gain is bounded by its share: "
                   f"1 / (1 - share).\n\n{table}\n")
        text = RESULTS.read_text()
        if "## cache\n" in text:
            text = re.sub(r"## cache\n.*?(?=\n## |\Z)", section, text, flags=re.S)
        else:
            text = text.rstrip("\n") + "\n\n" + section
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
