"""Single-file loading: peak RSS and time, ours vs the reference's `from_single_file`, full-size SD 1.5 UNet.

A full-size-config SD 1.5 UNet (random weights) is written once as an LDM-layout `.safetensors` file (fp16, 1.7 GB).
Each measurement is a fresh subprocess (one thread) that imports its library, loads the UNet from the file
(fp16 or, with `--dtype float32`, cast while loading; config from a folder holding the published SD 1.5 UNet config) and reports its wall time and peak RSS
(`VmHWM`); an import-only subprocess gives the baseline RSS to subtract. Runs are interleaved,
ours / reference, and the median and spread are printed.

    PYTHONPATH=. python bench/single_file.py [--rounds 3] [--dtype float16|float32] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CHILD = {
    "ours": """
        from diffblocks import UNet2DConditionModel as M
        model = M.from_single_file(FILE, config=CONFIG, torch_dtype=DTYPE)
    """,
    "reference": """
        from diffusers import UNet2DConditionModel as M
        model = M.from_single_file(FILE, config=CONFIG, subfolder="unet", torch_dtype=DTYPE)
    """,
    "import-ours": "from diffblocks import UNet2DConditionModel as M; model = None",
    "import-reference": "from diffusers import UNet2DConditionModel as M; model = None",
}


def _child(kind: str, file: Path, config: Path, dtype: str) -> dict:
    code = textwrap.dedent(f"""
        import json, time, torch
        torch.set_num_threads(1)
        FILE, CONFIG, DTYPE = {str(file)!r}, {str(config)!r}, getattr(torch, {dtype!r})
        start = time.perf_counter()
    """) + textwrap.dedent(CHILD[kind]) + textwrap.dedent("""
        elapsed = time.perf_counter() - start

        def hwm():  # this process's peak resident set (ru_maxrss would carry the parent's peak across exec)
            return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 2**20

        after_load = hwm()
        params = 0
        if model is not None:  # touch every weight, as inference or .to(device) would (mmap views are read now)
            for p in model.parameters():
                params += p.numel()
                float(p.detach().sum())  # reads every element
        print(json.dumps({"seconds": elapsed, "peak_rss_gb": after_load, "peak_rss_used_gb": hwm(), "params": params}))
    """)
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(ROOT))
    if out.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _write_file(workdir: Path) -> tuple[Path, Path]:
    import diffusers
    import torch
    from accelerate import init_empty_weights
    from model_fixtures import SD15_UNET_FULL
    from safetensors.torch import save_file
    from single_file_fixtures import unet_to_ldm

    file, config = workdir / "sd15-unet.safetensors", workdir / "config"
    if not file.exists():
        with init_empty_weights():
            unet = diffusers.UNet2DConditionModel(**SD15_UNET_FULL)
        gen = torch.Generator().manual_seed(0)
        state = {k: torch.randn(v.shape, generator=gen).half() for k, v in unet.state_dict(keep_vars=True).items()}
        save_file(unet_to_ldm(state, SD15_UNET_FULL), str(file))
        (config / "unet").mkdir(parents=True, exist_ok=True)
        (config / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **SD15_UNET_FULL}))
        (config / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                             "unet": ["diffusers", "UNet2DConditionModel"]}))
    return file, config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/db-single-file")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                        help="load dtype (the file is fp16: float32 casts every tensor while loading)")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    file, config = _write_file(workdir)
    print(f"file: {file} ({file.stat().st_size / 2**30:.2f} GiB, fp16 LDM layout), loaded as {args.dtype}")
    base = {k: _child(f"import-{k}", file, config, args.dtype)["peak_rss_gb"] for k in ("ours", "reference")}
    runs: dict[str, list[dict]] = {"ours": [], "reference": []}
    for _ in range(args.rounds):
        for kind in ("ours", "reference"):
            runs[kind].append(_child(kind, file, config, args.dtype))
    assert runs["ours"][0]["params"] == runs["reference"][0]["params"]
    print("peak RSS in GiB above the import-only baseline, medians; 'after use' = after every weight was read")
    print(f"{'':10} {'load time s (median, min-max)':>30} {'RSS after load':>15} {'RSS after use':>14}")
    med = {}
    for kind, values in runs.items():
        times = [v["seconds"] for v in values]
        med[kind] = (statistics.median(times), statistics.median(v["peak_rss_gb"] for v in values) - base[kind],
                     statistics.median(v["peak_rss_used_gb"] for v in values) - base[kind])
        print(f"{kind:10} {med[kind][0]:>12.2f} ({min(times):.2f}-{max(times):.2f}) {'':8}"
              f"{med[kind][1]:>15.2f} {med[kind][2]:>14.2f}")
    print(f"ours / reference: load time {med['ours'][0] / med['reference'][0]:.2f}x, peak RSS after use "
          f"{med['ours'][2] / med['reference'][2]:.2f}x (weights: {runs['ours'][0]['params'] * (2 if args.dtype == 'float16' else 4) / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
