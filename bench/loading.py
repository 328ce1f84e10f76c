"""Checkpoint loading: time and peak RSS of ours vs the reference (diffusers) on full-size SD 1.5 UNet and VAE.

The script writes full-size-config checkpoints with random weights (tests/model_fixtures.py configs, saved once in
the standard layout), then loads them many times, each load in a FRESH subprocess (1 torch thread) so peak RSS is
that load's own. Cases: fp32 as stored, and fp32 -> fp16 (`torch_dtype=torch.float16`); file in the page cache
("cached") and, where the OS allows it, dropped from the page cache first with posix_fadvise ("evicted").
Each child reports:

  * load      seconds of `from_pretrained` (lazy loads may not have read the data yet)
  * +touch    seconds of `from_pretrained` plus reading every weight once (what a first forward pays)
  * peak      growth of the child's peak RSS (VmHWM, reset after imports) over the load and the touch

Ours and the reference alternate (order flipped every round); medians and min-max over rounds are printed.

    python bench/loading.py [--rounds 3] [--models unet,vae] [--keep DIR] [--update-results]

Targets (issue 18): cached fp32 load incl. touching all weights <= 1.1x the reference; peak RSS <= the
reference's; fp32 -> fp16 peak <= 0.5x the reference's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from results import update_section  # noqa: E402  (bench/results.py)

CHILD = r"""
import json, os, re, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
impl, kind, folder, dtype, device = sys.argv[1:6]
if impl == "ours":
    from diffblocks.components.models import AutoencoderKL, UNet2DConditionModel
else:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.utils import logging as dlogging
    dlogging.set_verbosity_error(); dlogging.disable_progress_bar()
cls = UNet2DConditionModel if kind == "unet" else AutoencoderKL
torch_dtype = torch.float16 if dtype == "fp16" else None
def status(key):
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark to the current RSS (imports done)
base = status("VmRSS")
kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
if device != "cpu":
    kwargs["device" if impl == "ours" else "device_map"] = device
start = time.perf_counter()
model = cls.from_pretrained(folder, **kwargs)
loaded = time.perf_counter() - start
total = 0.0
with torch.no_grad():
    for p in model.parameters():
        total += float(p.sum())  # reads every byte of every weight once
if device != "cpu":
    torch.cuda.synchronize()
touched = time.perf_counter() - start
print(json.dumps({"load": loaded, "touch": touched, "peak": status("VmHWM") - base, "check": total,
                  "dtype": str(next(model.parameters()).dtype)}))
"""


def write_checkpoints(folder: Path, kinds: list[str]) -> dict[str, Path]:
    """Full-size configs with random weights, written once in the standard layout (by the reference)."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from model_fixtures import SD15_UNET_FULL, SD_VAE_FULL

    out = {}
    for kind in kinds:
        target = folder / kind
        out[kind] = target
        if (target / "diffusion_pytorch_model.safetensors").exists():
            continue
        import diffusers

        torch.manual_seed(0)
        cls, config = ((diffusers.UNet2DConditionModel, SD15_UNET_FULL) if kind == "unet"
                       else (diffusers.AutoencoderKL, SD_VAE_FULL))
        cls(**config).save_pretrained(str(target), max_shard_size="20GB")
    return out


def evict(folder: Path) -> bool:
    """Drop the folder's files from the page cache (posix_fadvise DONTNEED); False where not available."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for file in folder.glob("*.safetensors"):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def run_child(impl: str, kind: str, folder: Path, dtype: str, device: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, impl, kind, str(folder), dtype, device], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{impl} {kind} {dtype}: child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm(folder: Path) -> None:
    """Read the folder's files once so they are in the page cache."""
    for file in folder.glob("*.safetensors"):
        with open(file, "rb") as f:
            while f.read(64 << 20):
                pass


def measure(folders: dict[str, Path], rounds: int, device: str, modes: list[str], dtypes: list[str]) -> list[dict]:
    rows = []
    for kind, folder in folders.items():
        for dtype in dtypes:
            for mode in modes:
                samples: dict[str, list[dict]] = {"ours": [], "ref": []}
                for r in range(rounds):
                    order = ["ours", "ref"] if r % 2 == 0 else ["ref", "ours"]
                    for impl in order:
                        if mode == "evicted":
                            evict(folder)
                        else:
                            warm(folder)  # an earlier evicted run (or memory pressure) may have dropped it
                        samples[impl].append(run_child(impl, kind, folder, dtype, device))
                checks = {impl: s[0]["check"] for impl, s in samples.items()}
                if abs(checks["ours"] - checks["ref"]) > 1e-3 * max(1.0, abs(checks["ref"])):
                    raise AssertionError(f"{kind} {dtype}: weights differ between ours and the reference: {checks}")
                row = {"kind": kind, "dtype": dtype, "mode": mode}
                for impl, values in samples.items():
                    for key in ("load", "touch", "peak"):
                        series = [v[key] for v in values]
                        row[f"{impl}_{key}"] = (statistics.median(series), min(series), max(series))
                rows.append(row)
                print(format_row(row), flush=True)
    return rows


def _fmt(stat: tuple[float, float, float], scale: float, digits: int) -> str:
    med, lo, hi = (v * scale for v in stat)
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def format_row(row: dict) -> str:
    o_t, r_t = row["ours_touch"][0], row["ref_touch"][0]
    o_p, r_p = row["ours_peak"][0], row["ref_peak"][0]
    return (f"| {row['kind']} | {row['dtype']} | {row['mode']} | {_fmt(row['ours_load'], 1, 2)} | "
            f"{_fmt(row['ref_load'], 1, 2)} | {_fmt(row['ours_touch'], 1, 2)} | {_fmt(row['ref_touch'], 1, 2)} | "
            f"{o_t / r_t:.2f} | {_fmt(row['ours_peak'], 1e-9, 2)} | {_fmt(row['ref_peak'], 1e-9, 2)} | "
            f"{o_p / r_p:.2f} |")


HEADER = ("| model | dtype | page cache | ours load (s) | ref load (s) | ours +touch (s) | ref +touch (s) | "
          "+touch ours/ref | ours peak (GB) | ref peak (GB) | peak ours/ref |\n"
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="unet,vae")
    parser.add_argument("--modes", default="cached,evicted")
    parser.add_argument("--dtypes", default="fp32,fp16")
    parser.add_argument("--device", default="cpu", help="'cuda' measures direct-to-device loads (GPU machines)")
    parser.add_argument("--keep", help="folder to write (and reuse) the checkpoints in; default: a temporary one")
    parser.add_argument("--update-results", action="store_true")
    args = parser.parse_args(argv)
    kinds = args.models.split(",")
    modes = [m for m in args.modes.split(",") if m != "evicted" or hasattr(os, "posix_fadvise")]
    with tempfile.TemporaryDirectory() as tmp:
        folders = write_checkpoints(Path(args.keep or tmp), kinds)
        print(HEADER, flush=True)
        rows = measure(folders, args.rounds, args.device, modes, args.dtypes.split(","))
    import torch

    header = (f"Date {datetime.date.today().isoformat()}; machine: {os.cpu_count()}-core CPU ({platform.machine()}), "
              f"device {args.device}, torch {torch.__version__}; commit {git_commit()}; {args.rounds} rounds, each "
              "load in a fresh process (1 thread), ours and the reference alternating; median (min-max).")
    table = HEADER + "\n" + "\n".join(format_row(r) for r in rows)
    print("\n" + header + "\n\n" + table)
    if args.update_results:
        update_section("loading",
            "`bench/loading.py`: `from_pretrained` of full-size SD 1.5 UNet (3.4 GB fp32) and VAE (0.33 GB) "
            "checkpoints with random weights, ours vs the reference, fp32 and fp32 -> fp16, file in the page cache "
            "and evicted from it (posix_fadvise). `load` = from_pretrained alone (both libraries map the file "
            "lazily, so fp32 loads read little); `+touch` = load plus reading every weight once; peak = growth of "
            "the process's peak RSS (file pages mapped and touched count, as they do for the reference). Targets: "
            "cached fp32 +touch <= 1.1x, peak <= 1.0x, fp16 peak <= 0.5x the reference.\n\n"
            f"{header}\n\n{table}\n")


if __name__ == "__main__":
    main()
