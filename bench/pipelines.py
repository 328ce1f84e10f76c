"""Whole-pipeline time: diffblocks presets vs the reference (diffusers) pipelines on tiny folders, CPU.

Each scenario builds one tiny diffusers-format folder (tests/fixtures_sd.py: seeded random weights), loads it
into our auto preset (`ModularPipeline.from_pretrained`) and into the reference, checks that both give the same
images (max abs difference <= 1e-3, fp32) and then times whole calls, interleaved round by round, reporting
medians. Two comparisons:

  * vs the reference *standard* pipelines (StableDiffusionPipeline, ...): target ours/ref <= 1.05
  * vs the reference's *modular* SDXL pipeline (StableDiffusionXLAutoBlocks) with CFG on, which runs the
    conditional and unconditional passes as two batch-1 UNet calls: target ref/ours >= 1.15 (ours faster)

    python bench/pipelines.py [--quick] [--update-results]

`--update-results` rewrites the "## pipelines" section of bench/RESULTS.md (other sections untouched).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from results import update_section  # noqa: E402  (bench/results.py)


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.disable(logging.WARNING)
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def _time(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(pairs: dict[str, Callable[[], Any]], rounds: int) -> dict[str, Any]:
    """Median seconds per call of each callable, interleaved round by round (order flipped every round) after
    one warm-up each; also the per-round ratio ours/ref's p25 and p75 under "spread"."""
    for fn in pairs.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in pairs}
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            order = list(pairs.items())
            if r % 2:
                order.reverse()
            for name, fn in order:
                samples[name].append(_time(fn))
    finally:
        gc.enable()
    out: dict[str, Any] = {name: statistics.median(values) for name, values in samples.items()}
    if "ours" in samples and "ref" in samples:
        ratios = sorted(o / r for o, r in zip(samples["ours"], samples["ref"]))
        quart = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        out["spread"] = (quart[0], quart[2])
    return out


def _np(images: Any):
    import numpy as np

    return np.asarray(images)


def scenarios(root: Path, steps: int) -> list[dict[str, Any]]:
    import diffusers
    import torch
    from fixtures_sd import build_sd15, build_sdxl, test_image

    from diffblocks import ClassifierFreeGuidance, ModularPipeline

    def ours(path: Path) -> ModularPipeline:
        pipe = ModularPipeline.from_pretrained(str(path))
        pipe.load_components()
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def ref(cls, path: Path):
        pipe = cls.from_pretrained(str(path))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    sd15, sd15_inpaint, sdxl = build_sd15(root), build_sd15(root, inpaint=True), build_sdxl(root)
    image, mask = test_image(64), test_image(64, mode="L")
    out: list[dict[str, Any]] = []

    def add(name: str, ref_pipe, our_pipe, kind: str, **kwargs):
        def run_ref():
            return ref_pipe(**kwargs, generator=torch.Generator().manual_seed(0), output_type="np").images

        def run_ours():
            return our_pipe(**kwargs, generator=torch.Generator().manual_seed(0), output_type="np", output="images")

        out.append({"name": name, "kind": kind, "ref": run_ref, "ours": run_ours})

    common = dict(num_inference_steps=steps, height=64, width=64)
    p15 = ours(sd15)
    add("SD1.5 text2img (PNDM, CFG 7.5)", ref(diffusers.StableDiffusionPipeline, sd15), p15, "standard",
        prompt="a red cat", **common)
    add("SD1.5 text2img, 2 prompts x 2 images", ref(diffusers.StableDiffusionPipeline, sd15), p15, "standard",
        prompt=["a red cat", "a blue dog"], num_images_per_prompt=2, **common)
    add("SD1.5 img2img (strength 0.8)", ref(diffusers.StableDiffusionImg2ImgPipeline, sd15), p15, "standard",
        prompt="a red cat", image=image, strength=0.8, num_inference_steps=steps)
    add("SD1.5 inpaint (9-channel UNet)", ref(diffusers.StableDiffusionInpaintPipeline, sd15_inpaint),
        ours(sd15_inpaint), "standard", prompt="a red cat", image=image, mask_image=mask, **common)
    pxl = ours(sdxl)
    ref_xl = ref(diffusers.StableDiffusionXLPipeline, sdxl)
    add("SDXL text2img (Euler, CFG 5.0)", ref_xl, pxl, "standard", prompt="a red cat", **common)

    # the reference's modular SDXL pipeline, on the same component objects
    from diffusers.guiders import ClassifierFreeGuidance as RefCFG
    from diffusers.modular_pipelines import StableDiffusionXLAutoBlocks

    modular = StableDiffusionXLAutoBlocks().init_pipeline()
    modular.update_components(**{k: v for k, v in ref_xl.components.items()
                                 if k in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                                          "scheduler")}, guider=RefCFG(guidance_scale=5.0))
    def silence(block):  # the reference only configures top-level sub-blocks; its loop is nested
        if callable(getattr(block, "set_progress_bar_config", None)):
            block.set_progress_bar_config(disable=True)
        for child in getattr(block, "sub_blocks", {}).values():
            silence(child)

    silence(modular._blocks)
    pxl.update_components(guider=ClassifierFreeGuidance(guidance_scale=5.0))

    def run_modular():
        return modular(prompt="a red cat", generator=torch.Generator().manual_seed(0), output_type="np",
                       output="images", **common)

    def run_ours_xl():
        return pxl(prompt="a red cat", generator=torch.Generator().manual_seed(0), output_type="np",
                   output="images", **common)

    out.append({"name": "SDXL text2img, CFG on (reference modular pipeline)", "kind": "modular",
                "ref": run_modular, "ours": run_ours_xl})
    return out


def run(steps: int, rounds: int) -> str:
    import numpy as np
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sc in scenarios(Path(tmp), steps):
            a, b = _np(sc["ref"]()), _np(sc["ours"]())
            err = float(np.abs(a - b).max())
            if a.shape != b.shape or err > 1e-3:
                raise SystemExit(f"{sc['name']}: outputs differ (shapes {a.shape} vs {b.shape}, max abs {err:.2e}); "
                                 "not timing a pipeline that computes something else")
            t = measure({"ref": sc["ref"], "ours": sc["ours"]}, rounds)
            rows.append((sc["name"], sc["kind"], t["ours"], t["ref"], err, t["spread"]))
            print(f"{sc['name']}: ours {t['ours'] * 1e3:.1f} ms, ref {t['ref'] * 1e3:.1f} ms, "
                  f"ours/ref {t['ours'] / t['ref']:.3f} [p25-p75 of rounds {t['spread'][0]:.3f}-{t['spread'][1]:.3f}] "
                  f"(max abs diff {err:.1e})", flush=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=False).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    lines = [
        "`bench/pipelines.py`: whole-pipeline wall time of our presets vs the reference pipelines on the tiny "
        "test folders (tests/fixtures_sd.py, fp32, 64x64, CPU, 1 torch thread). Images are checked equal (max abs "
        "diff <= 1e-3) before timing; medians of interleaved rounds (order flipped every round) after a warm-up, "
        "and the p25-p75 of the per-round ratio. Targets: ours/standard <= 1.05; "
        "reference modular SDXL / ours >= 1.15.",
        "",
        f"Date {datetime.date.today()}; machine: {os.cpu_count()}-core CPU ({platform.machine()}), no GPU, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); commit {commit}; {steps} steps, "
        f"{rounds} rounds.",
        "",
        "| scenario | reference | ours (ms) | reference (ms) | ours/ref | ours/ref p25-p75 of rounds | ref/ours | "
        "max abs diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, kind, ours_t, ref_t, err, (lo, hi) in rows:
        lines.append(f"| {name} | {kind} | {ours_t * 1e3:.1f} | {ref_t * 1e3:.1f} | {ours_t / ref_t:.3f} | "
                     f"{lo:.3f}-{hi:.3f} | {ref_t / ours_t:.2f} | {err:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps and rounds (smoke run)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--update-results", action="store_true", help="rewrite the pipelines section of RESULTS.md")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # 2 shared cores: more threads than that make runs swing with others' load
    _quiet()
    steps, rounds = (4, 3) if args.quick else (args.steps, args.rounds)
    text = run(steps, rounds)
    print()
    print(text)
    if args.update_results:
        update_section("pipelines", text)


if __name__ == "__main__":
    main()
