"""Framework overhead: diffblocks vs the reference (diffusers.modular_pipelines) on trivial blocks.

The same three structures are built twice, once on each framework's classes (identical class names and
block code, only the base classes differ), so every microsecond measured is framework overhead:

  (a) seq8   8 sequential leaves, each reads one or two values and writes one: a whole pipeline call
  (b) loop   a loop wrapper (the docs' LoopWrapper: get_block_state, `loop_step(components, block_state,
             i=i)` per iteration, set_block_state) over 3 trivial sub-blocks; per-step overhead is
             (T(50 steps) - T(1 step)) / 49, so the fixed per-call cost cancels out
  (c) tree30 5 nested sequentials x 6 leaves plus an auto block (2 branches, one runs): fixed per-call cost

Each figure is the median over many samples of the mean of a batch of calls, after warm-up, with the
garbage collector paused while timing (the same for both). Both frameworks must return the same outputs
before anything is timed. The reference's warnings, logging and progress bars are silenced.

    python bench/overhead.py [--quick] [--update-results]

`--update-results` rewrites the "## overhead" section of bench/RESULTS.md (other sections untouched).
Targets (issue 2): ours < 1 ms per call in every scenario; our per-loop-step overhead <= 0.5x the reference's.

The stub part (`--only stub`) times real pipelines with the UNet replaced by a trivial op: the work outside the
model per denoise step, ours vs the standard pipelines (target, issue 18: <= 1.0x). Before/after a change:

    git archive <commit before> | tar -x -C /tmp/before
    python bench/overhead.py --only stub --baseline /tmp/before [--alternations 3] [--stub-rounds 5]

runs the stub part on this checkout and on /tmp/before in alternating processes (`--tree` picks the checkout a
process imports) and shows both sides' ratios to the standard pipeline.
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
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
from results import update_section  # noqa: E402  (bench/results.py)

# `--tree PATH` measures the diffblocks (and test fixtures) of another checkout, e.g. an export of the commit
# before a change (used by `--baseline`); RESULTS.md is always this checkout's
TREE = Path(sys.argv[sys.argv.index("--tree") + 1]).resolve() if "--tree" in sys.argv[:-1] else ROOT
sys.path.insert(0, str(TREE))
LOOP_STEPS = 50


# -- the structures, built on either framework ------------------------------------------------------------------
def make_blocks(ns: Any) -> dict[str, Any]:
    """{scenario: (block tree, inputs, output names)} built on the classes in `ns`."""
    Leaf, Seq, Loop, Auto = (ns.ModularPipelineBlocks, ns.SequentialPipelineBlocks,
                             ns.LoopSequentialPipelineBlocks, ns.AutoPipelineBlocks)
    InputParam, OutputParam = ns.InputParam, ns.OutputParam

    def chain_leaf(src: str, dst: str, with_scale: bool, extra: str | None = None) -> type:
        """Reads `src` (and `scale` when asked), writes `dst`; `extra` declares one more (unused) input."""

        class ChainLeaf(Leaf):
            @property
            def inputs(self):
                params = [InputParam(src, required=True, type_hint=int)]
                if with_scale:
                    params.append(InputParam("scale", default=1, type_hint=int))
                if extra:
                    params.append(InputParam(extra))
                return params

            @property
            def intermediate_outputs(self):
                return [OutputParam(dst, type_hint=int)]

            def __call__(self, components, state):
                bs = self.get_block_state(state)
                setattr(bs, dst, getattr(bs, src) * (bs.scale if with_scale else 1) + 1)
                self.set_block_state(state, bs)
                return components, state

        ChainLeaf.__name__ = ChainLeaf.__qualname__ = f"Leaf_{src}_{dst}"
        return ChainLeaf

    # (a) 8 sequential leaves: v0 -> v1 -> ... -> v8, every other one also reads `scale`
    seq8 = Seq.from_blocks_dict({f"b{k}": chain_leaf(f"v{k}", f"v{k + 1}", k % 2 == 0) for k in range(8)})

    # (b) the docs' loop wrapper over three trivial sub-blocks sharing one block state
    def loop_leaf(src: str, dst: str) -> type:
        class LoopLeaf(Leaf):
            @property
            def inputs(self):
                return [InputParam(src)]

            @property
            def intermediate_outputs(self):
                return [OutputParam(dst)]

            def __call__(self, components, block_state, i: int):
                setattr(block_state, dst, getattr(block_state, src) + i)
                return components, block_state

        LoopLeaf.__name__ = LoopLeaf.__qualname__ = f"LoopLeaf_{src}_{dst}"
        return LoopLeaf

    class LoopWrapper(Loop):
        model_name = "overhead"

        @property
        def loop_inputs(self):
            return [InputParam(name="num_steps", required=True, type_hint=int)]

        def __call__(self, components, state):
            block_state = self.get_block_state(state)
            for i in range(block_state.num_steps):
                components, block_state = self.loop_step(components, block_state, i=i)
            self.set_block_state(state, block_state)
            return components, state

    # instances: the reference's LoopSequentialPipelineBlocks.from_blocks_dict keeps classes as given
    loop = LoopWrapper.from_blocks_dict({"s1": loop_leaf("x", "y")(), "s2": loop_leaf("y", "z")(),
                                         "s3": loop_leaf("z", "x")()})

    # (c) 5 sequentials x 6 leaves, plus an auto block with a triggered and a default branch
    groups = {}
    for g in range(5):
        groups[f"g{g}"] = Seq.from_blocks_dict({
            f"l{k}": chain_leaf(f"t{6 * g + k}", f"t{6 * g + k + 1}", k % 3 == 0) for k in range(6)
        })

    class PickBranch(Auto):
        # the triggered branch declares its trigger: the reference only passes declared inputs to the state
        block_classes = [chain_leaf("t30", "out", True, extra="mask"), chain_leaf("t30", "out", False)]
        block_names = ["masked", "plain"]
        block_trigger_inputs = ["mask", None]

    groups["pick"] = PickBranch
    tree30 = Seq.from_blocks_dict(groups)

    return {
        "seq8": (seq8, {"v0": 1, "scale": 2}, ["v8"]),
        "loop": (loop, {"x": 0, "num_steps": LOOP_STEPS}, ["x", "y", "z"]),
        "tree30": (tree30, {"t0": 1, "scale": 2, "mask": 1}, ["out", "t15"]),
    }


def ours_namespace() -> SimpleNamespace:
    import diffblocks.blocks as ours

    return SimpleNamespace(**{n: getattr(ours, n) for n in (
        "ModularPipelineBlocks", "SequentialPipelineBlocks", "LoopSequentialPipelineBlocks", "AutoPipelineBlocks",
        "InputParam", "OutputParam", "BlockState")})


def reference_namespace() -> SimpleNamespace:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import diffusers
    from diffusers import modular_pipelines as ref
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    del diffusers
    from diffusers.modular_pipelines.modular_pipeline import BlockState

    return SimpleNamespace(BlockState=BlockState, **{n: getattr(ref, n) for n in (
        "ModularPipelineBlocks", "SequentialPipelineBlocks", "LoopSequentialPipelineBlocks", "AutoPipelineBlocks",
        "InputParam", "OutputParam")})


# -- timing --------------------------------------------------------------------------------------------------------
class _PlainState:
    """A bare attribute bag: the plain-Python floor uses it so neither framework's BlockState is counted there."""


def _batch_size(fn: Callable[[], Any], target_sample_s: float) -> int:
    for _ in range(20):  # warm-up
        fn()
    start = time.perf_counter()
    for _ in range(5):
        fn()
    once = max((time.perf_counter() - start) / 5, 1e-7)
    return max(1, min(2000, int(target_sample_s / once)))


def interleaved_medians(fns: dict[str, Callable[[], Any]], samples: int,
                        target_sample_s: float = 0.002) -> dict[str, list[float]]:
    """Per-call seconds of every fn, `samples` rounds; each round times one batch of each fn in turn, so a
    change in machine load (2 shared cores) hits all figures of a round alike. Returns the per-round lists."""
    batches = {name: _batch_size(fn, target_sample_s) for name, fn in fns.items()}
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(samples):
            for name, fn in fns.items():
                batch = batches[name]
                start = time.perf_counter()
                for _ in range(batch):
                    fn()
                rounds[name].append((time.perf_counter() - start) / batch)
    finally:
        if gc_was_enabled:
            gc.enable()
    return rounds


def _call(pipe: Any, inputs: dict[str, Any], outputs: list[str]) -> Callable[[], Any]:
    return lambda: pipe(**inputs, output=outputs)


def _plain_loop(loop: Any) -> Callable[[], Any]:
    """The loop's sub-blocks called in a plain Python loop, in the same form the framework uses
    (`block(components, block_state, i=i)`), on a bare attribute bag: the cost of the blocks themselves."""
    subs = tuple(loop.sub_blocks.values())

    def plain_loop() -> None:
        block_state = _PlainState()
        block_state.x = 0
        components = None
        for i in range(LOOP_STEPS):
            for block in subs:
                components, block_state = block(components, block_state, i=i)

    return plain_loop


def measure(ours_ns: SimpleNamespace, ref_ns: SimpleNamespace, samples: int) -> tuple[dict, dict]:
    """{figure: seconds} for ours and the reference; every figure a median over interleaved rounds."""
    fns: dict[str, Callable[[], Any]] = {}
    for tag, ns in (("ours", ours_ns), ("ref", ref_ns)):
        for name, (blocks, inputs, outputs) in make_blocks(ns).items():
            pipe = blocks.init_pipeline()
            fns[f"{tag}/{name}"] = _call(pipe, inputs, outputs)
            if name == "loop":
                fns[f"{tag}/loop1"] = _call(pipe, {**inputs, "num_steps": 1}, outputs)
                if tag == "ours":
                    fns["floor"] = _plain_loop(blocks)
    rounds = interleaved_medians(fns, samples)
    med = {name: statistics.median(values) for name, values in rounds.items()}
    floor = med["floor"] / LOOP_STEPS
    result = {}
    for tag in ("ours", "ref"):
        steps = [(full - one) / (LOOP_STEPS - 1)
                 for full, one in zip(rounds[f"{tag}/loop"], rounds[f"{tag}/loop1"])]
        step = statistics.median(steps)
        result[tag] = {"seq8": med[f"{tag}/seq8"], "tree30": med[f"{tag}/tree30"], "loop_call": med[f"{tag}/loop"],
                       "loop_step": step, "loop_floor": floor, "loop_fw": step - floor}
    return result["ours"], result["ref"]


def check_parity(ours: SimpleNamespace, ref: SimpleNamespace) -> None:
    """Both frameworks compute the same values on the same structures (else the timings compare nothing)."""
    a, b = make_blocks(ours), make_blocks(ref)
    for name in a:
        blocks_a, inputs, outputs = a[name]
        got = blocks_a.init_pipeline()(**inputs, output=outputs)
        want = b[name][0].init_pipeline()(**inputs, output=outputs)
        if got != want:
            raise AssertionError(f"scenario {name!r}: ours {got} != reference {want}")


# -- stub-model per-step work: real pipelines, the model replaced by a stub --------------------------------------
STUB_STEPS = (2, 152)  # per step = (T(152 steps) - T(2 steps)) / 150: text encoding, decode, set-up cancel out


def _stub_model(model: Any) -> None:
    """Replace the model's forward by the same trivial op for every framework (the model is not measured)."""

    def forward(sample, timestep=None, *args, return_dict=True, **kwargs):
        out = sample * 0.5
        return (out,) if not return_dict else SimpleNamespace(sample=out)

    model.forward = forward


def stub_pipelines(root: Path) -> dict[str, dict[str, Callable[[int], Any]]]:
    """{scenario: {implementation: fn(steps)}} on the tiny SDXL and SD1.5 test folders, stubbed UNets."""
    sys.path.insert(0, str(TREE / "tests"))
    import diffusers
    import torch
    from diffusers.guiders import ClassifierFreeGuidance as RefCFG
    from diffusers.modular_pipelines import StableDiffusionXLAutoBlocks
    from fixtures_sd import build_sd15, build_sdxl

    from diffblocks import ModularPipeline

    def ours(path: Path) -> Any:
        pipe = ModularPipeline.from_pretrained(str(path))
        pipe.load_components()
        pipe.set_progress_bar_config(disable=True)
        _stub_model(pipe.unet)
        return pipe

    def standard(cls: Any, path: Path) -> Any:
        pipe = cls.from_pretrained(str(path))
        pipe.set_progress_bar_config(disable=True)
        _stub_model(pipe.unet)
        return pipe

    def silence(block: Any) -> None:
        if callable(getattr(block, "set_progress_bar_config", None)):
            block.set_progress_bar_config(disable=True)
        for child in getattr(block, "sub_blocks", {}).values():
            silence(child)

    sdxl, sd15 = build_sdxl(root), build_sd15(root)
    ours_xl, std_xl = ours(sdxl), standard(diffusers.StableDiffusionXLPipeline, sdxl)
    ours_15, std_15 = ours(sd15), standard(diffusers.StableDiffusionPipeline, sd15)
    std_15.scheduler = diffusers.EulerDiscreteScheduler.from_config(std_15.scheduler.config)
    from diffblocks.components.schedulers import EulerDiscreteScheduler

    ours_15.update_components(scheduler=EulerDiscreteScheduler.from_config(dict(ours_15.scheduler.config)))
    xl_parts = {k: v for k, v in std_xl.components.items()
                if k in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")}
    out: dict[str, dict[str, Callable[[int], Any]]] = {}
    common = {"height": 64, "width": 64, "output_type": "latent"}
    for scale in (5.0, 1.0):
        modular = StableDiffusionXLAutoBlocks().init_pipeline()
        modular.update_components(**xl_parts, guider=RefCFG(guidance_scale=scale))
        silence(modular._blocks)
        cfg = "CFG on" if scale > 1 else "CFG off"

        def gen() -> Any:
            return torch.Generator().manual_seed(0)

        out[f"SDXL, {cfg}"] = {
            "ours": lambda n, s=scale: ours_xl(prompt="a red cat", num_inference_steps=n, guidance_scale=s,
                                               generator=gen(), output="latents", **common),
            "standard": lambda n, s=scale: std_xl(prompt="a red cat", num_inference_steps=n, guidance_scale=s,
                                                  generator=gen(), **common).images,
            "ref modular": lambda n, m=modular: m(prompt="a red cat", num_inference_steps=n, generator=gen(),
                                                  output="latents", **common),
        }
        out[f"SD1.5, {cfg}"] = {
            "ours": lambda n, s=scale: ours_15(prompt="a red cat", num_inference_steps=n, guidance_scale=s,
                                               generator=gen(), output="latents", **common),
            "standard": lambda n, s=scale: std_15(prompt="a red cat", num_inference_steps=n, guidance_scale=s,
                                                  generator=gen(), **common).images,
        }
    return out


def measure_stub(rounds: int, raw: dict | None = None) -> list[tuple[str, str, float, float, float, float]]:
    """Rows (scenario, implementation, per-step us median, ratio to standard median, ratio p25, ratio p75);
    `raw` receives {scenario: {implementation: {"per_step": [...], "ratio": [...]}}} (per round).

    CPU time of this process (`time.process_time`, 1 thread), so time the shared machine gives to other jobs is
    not counted; implementations interleaved within each round, the ratio taken per round."""
    import tempfile

    import numpy as np
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scenarios = stub_pipelines(Path(tmp))
        for name, impls in scenarios.items():
            results = {impl: np.asarray(fn(STUB_STEPS[0])) for impl, fn in impls.items()}
            first = next(iter(results.values()))
            for impl, value in results.items():  # the same latents (stub model): the same work was done
                if value.shape != first.shape or np.abs(value - first).max() > 1e-4:
                    raise AssertionError(f"{name}: {impl} latents differ from {next(iter(results))}")
            per_step: dict[str, list[float]] = {impl: [] for impl in impls}
            gc.collect()
            gc.disable()
            try:
                for r in range(rounds):
                    order = list(impls.items())
                    if r % 2:
                        order.reverse()
                    for impl, fn in order:
                        start = time.process_time()
                        fn(STUB_STEPS[0])
                        short = time.process_time() - start
                        start = time.process_time()
                        fn(STUB_STEPS[1])
                        long = time.process_time() - start
                        per_step[impl].append((long - short) / (STUB_STEPS[1] - STUB_STEPS[0]))
            finally:
                gc.enable()
            base = np.asarray(per_step["standard"])
            for impl, values in per_step.items():
                ratios = np.asarray(values) / base
                if raw is not None:
                    raw.setdefault(name, {})[impl] = {"per_step": list(values), "ratio": ratios.tolist()}
                rows.append((name, impl, float(np.median(values)) * 1e6, float(np.median(ratios)),
                             float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))))
                print(f"{name:<16} {impl:<12} {rows[-1][2]:7.1f} us/step  vs standard {rows[-1][3]:.3f} "
                      f"[{rows[-1][4]:.3f}, {rows[-1][5]:.3f}]", flush=True)
    return rows


def format_stub(rows: list[tuple[str, str, float, float, float, float]]) -> str:
    lines = ["| scenario | implementation | per step (us, CPU time) | / standard (median) | / standard (p25-p75) |",
             "|---|---|---:|---:|---:|"]
    for name, impl, us, ratio, lo, hi in rows:
        lines.append(f"| {name} | {impl} | {us:.1f} | {ratio:.3f} | {lo:.3f}-{hi:.3f} |")
    return "\n".join(lines)


def measure_stub_with_baseline(baseline: Path, alternations: int, rounds: int) -> tuple[list, list]:
    """The stub part on this checkout ("after") and on `baseline` ("before"), each in its own process, the two
    alternating (order flipped every time), `rounds` rounds per process; per-round ratios pooled per side."""
    import json
    import tempfile

    import numpy as np

    pooled: dict[str, dict] = {"after": {}, "before": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for a in range(alternations):
            sides = [("after", ROOT), ("before", baseline)]
            for side, tree in (sides if a % 2 == 0 else sides[::-1]):
                out = Path(tmp) / f"{side}-{a}.json"
                subprocess.run([sys.executable, str(Path(__file__).resolve()), "--only", "stub", "--stub-rounds",
                                str(rounds), "--json", str(out), "--tree", str(tree)], check=True)
                for name, impls in json.loads(out.read_text()).items():
                    for impl, data in impls.items():
                        entry = pooled[side].setdefault(name, {}).setdefault(impl, {"per_step": [], "ratio": []})
                        entry["per_step"] += data["per_step"]
                        entry["ratio"] += data["ratio"]

    def rows(side: str) -> list:
        return [(name, impl, float(np.median(d["per_step"])) * 1e6, float(np.median(d["ratio"])),
                 float(np.percentile(d["ratio"], 25)), float(np.percentile(d["ratio"], 75)))
                for name, impls in pooled[side].items() for impl, d in impls.items()]

    return rows("after"), rows("before")


def format_stub_with_baseline(after: list, before: list) -> str:
    earlier = {(name, impl): (ratio, lo, hi) for name, impl, _, ratio, lo, hi in before}
    lines = ["| scenario | implementation | per step (us, CPU time) | / standard (median) | / standard (p25-p75) | "
             "before: / standard (median, p25-p75) |", "|---|---|---:|---:|---:|---:|"]
    for name, impl, us, ratio, lo, hi in after:
        b = earlier.get((name, impl))
        shown = f"{b[0]:.3f} ({b[1]:.3f}-{b[2]:.3f})" if b is not None and impl != "standard" else "-"
        lines.append(f"| {name} | {impl} | {us:.1f} | {ratio:.3f} | {lo:.3f}-{hi:.3f} | {shown} |")
    return "\n".join(lines)


# -- report --------------------------------------------------------------------------------------------------------
ROWS = [
    ("seq8", "(a) 8 sequential blocks, whole call", 1),
    ("seq8", "(a) per block call (whole call / 8)", 8),
    ("loop_step", "(b) loop: per step, total (3 sub-blocks)", 1),
    ("loop_floor", "(b) loop: per step, plain-Python floor (same)", 1),
    ("loop_fw", "(b) loop: per step, framework overhead", 1),
    ("loop_call", f"(b) loop: whole call, {LOOP_STEPS} steps", 1),
    ("tree30", "(c) 30-block tree + auto, whole call", 1),
]


def format_table(ours: dict[str, float], ref: dict[str, float]) -> str:
    width = max(len(label) for _, label, _ in ROWS)
    lines = [f"| {'scenario':<{width}} | {'ours (us)':>10} | {'reference (us)':>14} | {'ours/ref':>8} |",
             f"|{'-' * (width + 2)}|{'-' * 11}:|{'-' * 15}:|{'-' * 9}:|"]
    for key, label, div in ROWS:
        o, r = ours[key] / div * 1e6, ref[key] / div * 1e6
        lines.append(f"| {label:<{width}} | {o:>10.1f} | {r:>14.1f} | {o / r:>8.3f} |")
    return "\n".join(lines)


def verdict(ours: dict[str, float], ref: dict[str, float]) -> list[str]:
    worst = max(ours["seq8"], ours["tree30"], ours["loop_call"])
    ratio = ours["loop_fw"] / ref["loop_fw"]
    return [
        f"- ours under 1 ms per call in every scenario: {'yes' if worst < 1e-3 else 'NO'} "
        f"(slowest: {worst * 1e3:.3f} ms)",
        f"- per-loop-step framework overhead <= 0.5x the reference: {'yes' if ratio <= 0.5 else 'NO'} "
        f"(ratio {ratio:.3f}; per-step total ratio {ours['loop_step'] / ref['loop_step']:.3f})",
    ]


def machine() -> str:
    cpus = os.cpu_count()
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except ImportError:  # pragma: no cover
        gpu = "no GPU"
    return f"{cpus}-core CPU ({platform.processor() or platform.machine()}), {gpu}, Python {platform.python_version()}"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


EXPLANATION = (
    "Where our time goes: a pipeline call validates the user inputs once against the root's cached port "
    "table (one `check_value` per input), copies them into a fresh PipelineState and runs the tree. Each "
    "leaf costs one `get_block_state` and one `set_block_state`, loops over precomputed tuples "
    "(`read_plan`/`write_plan`, built once per structure and revalidated by an O(1) generation counter), "
    "so a leaf call is a few dict operations plus the block's own Python; composites iterate their cached "
    "children. The reference re-reads every leaf's port properties and re-merges composite "
    "`inputs`/`intermediate_outputs` recursively on each pipeline call and each get/set_block_state, which "
    "is why (a) and (c) are 2-5x cheaper here (run-to-run spread on the shared cores) and the gap grows "
    "with tree size. Per loop step both "
    "frameworks do the same minimal thing, `loop_step` running `block(components, block_state, **kwargs)` "
    "for each sub-block with no state I/O or validation. Ours installs, on first use, a step function on the "
    "loop instance (shadowing the method, so no method binding per step) that holds the sub-blocks in "
    "closure cells, checks the O(1) generation counter and locates a failing sub-block from the traceback "
    "only on error; BlockState has no `__getattr__` (the undeclared-field explanation is added as an "
    "exception note when the error surfaces), so sub-blocks' attribute reads stay on CPython's fast path. "
    "Together this brings our per-step overhead to ~0.6-0.7x the reference's; what remains over the floor "
    "(~0.3 us for 3 sub-blocks) is the `loop_step` call itself and CPython's dispatch of the "
    "kwargs-forwarded calls, which the call convention fixes, so the 0.5x target is not met. Unrolling the "
    "sub-block calls into `exec`-generated code was probed at 0.53-0.66x: not worth code generation for "
    "~0.05 us per step against a model step of milliseconds."
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200, help="timed samples per figure (median taken)")
    parser.add_argument("--quick", action="store_true", help="few samples: checks the script, numbers are noisy")
    parser.add_argument("--update-results", action="store_true", help="rewrite the overhead section of RESULTS.md")
    parser.add_argument("--stub-rounds", type=int, default=15, help="rounds of the stub-model per-step figure")
    parser.add_argument("--only", choices=("blocks", "stub"), help="run one part only")
    parser.add_argument("--tree", type=Path, help="measure the diffblocks of another checkout (see TREE)")
    parser.add_argument("--json", type=Path, help="stub part: write the per-round values to this file")
    parser.add_argument("--baseline", type=Path,
                        help="stub part: also measure this checkout (e.g. `git archive` of the commit before a "
                             "change), alternating processes, and show its ratios beside ours")
    parser.add_argument("--alternations", type=int, default=3, help="with --baseline: processes per side")
    args = parser.parse_args(argv)
    samples = 10 if args.quick else args.samples
    ours_ns, ref_ns = ours_namespace(), reference_namespace()
    if args.only != "blocks":
        raw: dict = {}
        if args.baseline is not None:
            after, before = measure_stub_with_baseline(args.baseline.resolve(), args.alternations,
                                                       3 if args.quick else args.stub_rounds)
            stub_table = format_stub_with_baseline(after, before)
        else:
            stub_table = format_stub(measure_stub(3 if args.quick else args.stub_rounds, raw))
        if args.json is not None:
            import json

            args.json.write_text(json.dumps(raw))
        sys.stdout.write("\n" + stub_table + "\n")
        if args.update_results:
            update_section(
                "denoise step overhead (stub model)",
                "`bench/overhead.py` (stub part): work outside the model per denoise step, real pipelines on the tiny "
                "test folders (64x64, Euler) with the UNet's forward replaced by the same trivial op everywhere: "
                "ours vs the reference's standard pipelines and its modular SDXL pipeline, CFG on (2 passes) and off. "
                f"Per step = (T({STUB_STEPS[1]} steps) - T({STUB_STEPS[0]} steps)) / {STUB_STEPS[1] - STUB_STEPS[0]} "
                "in CPU time of the process (1 torch thread), so time the shared machine gives to other jobs is not "
                "counted; implementations interleaved within each round (order alternating), the ratio to the "
                "standard pipeline taken per round; median and p25-p75 over rounds. The latents of all "
                "implementations are checked equal first. Target: ours <= 1.0x the standard pipeline."
                + (" With `--baseline`, the same measurement of an earlier checkout runs in alternating processes "
                   "(the last column: its ratios to the standard pipeline in its own rounds)."
                   if args.baseline is not None else "") + "\n\n"
                f"Date {datetime.date.today().isoformat()}; machine: {machine()}; commit {git_commit()}; "
                + (f"{args.alternations} x {3 if args.quick else args.stub_rounds} rounds per side"
                   if args.baseline is not None else f"{3 if args.quick else args.stub_rounds} rounds")
                + f".\n\n{stub_table}\n")
        if args.only == "stub":
            return
    check_parity(ours_ns, ref_ns)
    ours, ref = measure(ours_ns, ref_ns, samples)
    table = format_table(ours, ref)
    lines = verdict(ours, ref)
    header = (f"Date {datetime.date.today().isoformat()}; machine: {machine()}; commit {git_commit()}; "
              f"median of {samples} interleaved rounds (a ~2 ms batch of calls per figure each) after warm-up, gc paused.")
    sys.stdout.write(header + "\n\n" + table + "\n\n" + "\n".join(lines) + "\n")
    if args.update_results:
        body = (
            "`bench/overhead.py`: framework overhead with trivial blocks, ours vs the same structures built on "
            "`diffusers.modular_pipelines` 0.42 (outputs checked equal first). (a) 8 sequential leaves; "
            f"(b) the docs' LoopWrapper over 3 sub-blocks, per-step = (T({LOOP_STEPS}) - T(1)) / {LOOP_STEPS - 1}; "
            "(c) 5 x 6 nested sequential leaves plus an auto block. Run `python bench/overhead.py "
            "--update-results` to refresh this section.\n\n"
            f"{header}\n\n{table}\n\n" + "\n".join(lines) + "\n\n" + EXPLANATION
        )
        update_section("overhead", body)


if __name__ == "__main__":
    main()
