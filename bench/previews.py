"""Preview projection error vs a full VAE decode, per family, on the tiny fixture VAEs (seeded random weights).

For SD 1.5, SDXL and Flux fixture folders: smooth random images are VAE-encoded (distribution mean, then the
family's scaling/shift) into latents; half fit latent-to-RGB factors by least squares against the decoder
(`fit_latent_rgb`), the other half measure the mean absolute error in [0, 1] units of each projection
(nearest-upsampled) against the full decode: the fitted factors, the published factors for the real VAEs
(ComfyUI's; not expected to fit random-weight VAEs), and a constant (mean colour) baseline. Also times one
projection and one VAE decode of the same latents (1 thread, median of 20).

    python bench/previews.py [--update-results]
"""

from __future__ import annotations

import argparse
import datetime
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


def _median_time(fn, n: int = 20) -> float:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run() -> list[dict]:
    import torch
    from fixtures_flux import build_flux
    from fixtures_sd import build_sd15, build_sdxl

    from diffblocks import ModularPipeline
    from diffblocks.presets.previews import (
        LATENT_RGB,
        LatentRGB,
        fit_latent_rgb,
        projection_error,
        vae_decode_latents,
    )

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for family, build in (("sd", build_sd15), ("sdxl", build_sdxl), ("flux", build_flux)):
            pipe = ModularPipeline.from_pretrained(str(build(Path(tmp))))
            pipe.load_components(["vae"], torch_dtype=torch.float32)
            vae = pipe.vae
            torch.manual_seed(0)
            images = torch.nn.functional.interpolate(torch.rand(16, 3, 4, 4) * 2 - 1, size=64, mode="bilinear")
            raw = vae.encode(images).latent_dist.mean
            if family == "flux":
                latents = (raw - vae.config.shift_factor) * vae.config.scaling_factor
            else:
                latents = raw * vae.config.scaling_factor
            fit_set, test_set = latents[:8], latents[8:]
            fitted = fit_latent_rgb(fit_set, lambda x, f=family, v=vae: vae_decode_latents(v, x, f) * 2 - 1)
            decoded = vae_decode_latents(vae, test_set, family)
            mean = decoded.mean(dim=(0, 2, 3)) * 2 - 1
            constant = LatentRGB(((0.0, 0.0, 0.0),) * latents.shape[1], tuple(float(v) for v in mean))
            one = test_set[:1]
            rows.append({
                "family": family, "channels": latents.shape[1],
                "fitted": projection_error(fitted, test_set, decoded),
                "published": projection_error(LATENT_RGB[family], test_set, decoded),
                "constant": projection_error(constant, test_set, decoded),
                "t_projection": _median_time(lambda f=family, x=one: LATENT_RGB[f].project(x)),
                "t_decode": _median_time(lambda f=family, v=vae, x=one: vae_decode_latents(v, x, f)),
            })
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["| family | latent channels | MAE fitted | MAE published factors | MAE constant | projection ms | "
             "VAE decode ms |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['channels']} | {r['fitted']:.4f} | {r['published']:.4f} | "
                     f"{r['constant']:.4f} | {1000 * r['t_projection']:.3f} | {1000 * r['t_decode']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update-results", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.disable(logging.WARNING)
    table = format_rows(run())
    print(table)
    if args.update_results:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        section = (f"`python bench/previews.py` ({datetime.date.today()}, commit {commit}, "
                   f"{platform.processor() or platform.machine()}, CPU, 1 thread; GPU not run). Projection error "
                   f"(mean absolute, [0, 1] units, 64x64 images, 8 held-out images) against the full VAE decode "
                   f"on the tiny fixture VAEs (random weights). The published factors are ComfyUI's for the real "
                   f"VAEs and are not expected to fit random VAEs; with a real VAE, `fit_latent_rgb` gives factors "
                   f"fitted the same way.\n\n{table}\n")
        update_section("previews", section)


if __name__ == "__main__":
    main()
