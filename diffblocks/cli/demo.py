"""`diffblocks demo`: text-to-image on a cached random-weight SD model (offline), or the toy graph."""

from __future__ import annotations

import argparse


def _toy_demo(args: argparse.Namespace) -> int:
    from ..presets.toy import ToyDiffusionBlocks

    blocks = ToyDiffusionBlocks()
    print(blocks)
    print()
    print(blocks.doc)
    print("Data flow (Mermaid):")
    print(blocks.to_mermaid())
    pipe = blocks.init_pipeline()
    pipe.set_progress_bar_config(disable=True)
    state = pipe(num_points=args.num_points, seed=args.seed, trace=True)
    print("Trace:")
    print(state.trace.format())
    print()
    mean = [round(float(v), 3) for v in state.get("mean")]
    print(f"Toy diffusion of {args.num_points} points: sample mean {mean} (target [2.0, -1.0]).")
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.toy:
        return _toy_demo(args)
    import time

    import torch

    from ..presets.sd.demo import build_demo_folder
    from ..runtime.pipeline import ModularPipeline

    start = time.perf_counter()
    folder = build_demo_folder(args.folder)
    print(f"Model folder: {folder} (built once, then cached; {time.perf_counter() - start:.1f} s)")
    print("NOTE: this small SD-architecture model has seeded RANDOM weights (no trained model is bundled yet):")
    print("      the image shows the whole block graph running end to end, not what a trained model would draw.")
    pipe = ModularPipeline.from_pretrained(str(folder))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    workflow = pipe.blocks.get_workflow("text2image")
    print()
    print("Auto preset, text2image workflow:")
    print(workflow)
    start = time.perf_counter()
    state = pipe(prompt=args.prompt, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed),
                 height=args.size, width=args.size, trace=True)
    elapsed = time.perf_counter() - start
    print()
    print("Per-block trace:")
    print(state.trace.format())
    image = state.values["images"][0]
    image.save(args.out)
    print()
    print(f"Saved {args.out} ({image.width}x{image.height}, {args.steps} steps, {elapsed:.2f} s). Random weights: "
          f"expect structured noise.")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    demo_p = sub.add_parser("demo", help="text-to-image through the SD auto preset on a cached random-weight "
                                          "model (offline), with the per-block trace")
    demo_p.add_argument("--prompt", default="a watercolor fox in the snow")
    demo_p.add_argument("--steps", type=int, default=20)
    demo_p.add_argument("--size", type=int, default=64, help="image height and width in pixels")
    demo_p.add_argument("--seed", type=int, default=0)
    demo_p.add_argument("--out", default="demo.png")
    demo_p.add_argument("--folder", default=None, help="where to build/cache the demo model (default: ~/.cache)")
    demo_p.add_argument("--toy", action="store_true", help="run the model-free toy block graph instead")
    demo_p.add_argument("--num-points", type=int, default=512, help="(--toy) number of points")
    demo_p.set_defaults(func=_demo)
