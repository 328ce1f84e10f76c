"""`diffblocks demo`: text-to-image on the bundled trained demo model (offline), or the model-free toy graph."""

from __future__ import annotations

import argparse

from ..assets import DEMO_GUIDANCE_SCALE, DEMO_PROMPT, DEMO_STEPS


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


def _check_prompt(prompt: str) -> None:
    """Warn (not refuse) when the prompt is outside what the demo model was trained on."""
    from ..demo_data import parse_caption

    try:
        parse_caption(prompt)
    except ValueError:
        print(f"NOTE: the demo model only learned prompts like {DEMO_PROMPT!r} (colors red, green, blue, yellow, "
              f"white, black; shapes circle, square, triangle); {prompt!r} is outside that, expect a guess.")


def _demo(args: argparse.Namespace) -> int:
    if args.toy:
        return _toy_demo(args)
    import time

    import torch

    from ..assets import demo_model_path
    from ..runtime.pipeline import ModularPipeline

    _check_prompt(args.prompt)
    start = time.perf_counter()
    folder = demo_model_path()
    pipe = ModularPipeline.from_pretrained(str(folder))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=args.quiet)
    print(f"Model: the bundled demo model ({folder}), loaded in {time.perf_counter() - start:.1f} s")
    if args.verbose:
        print()
        print("Auto preset, text2image workflow:")
        print(pipe.blocks.get_workflow("text2image"))
    start = time.perf_counter()
    state = pipe(prompt=args.prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
                 generator=torch.Generator().manual_seed(args.seed), height=args.size, width=args.size,
                 trace=args.verbose)
    elapsed = time.perf_counter() - start
    if args.verbose:
        print()
        print("Per-block trace:")
        print(state.trace.format())
    image = state.values["images"][0]
    image.save(args.out)
    print(f"Saved {args.out}: {args.prompt!r}, seed {args.seed}, {args.steps} steps, guidance {args.guidance}, "
          f"{image.width}x{image.height}, {elapsed:.2f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    demo_p = sub.add_parser("demo", help="text-to-image with the bundled trained demo model (offline): prompts "
                                          "'a {color} {shape} on a {background} background'")
    demo_p.add_argument("--prompt", default=DEMO_PROMPT,
                        help="'a {color} {shape} on a {background} background'; colors and backgrounds: red, green, "
                             "blue, yellow, white, black; shapes: circle, square, triangle (default: %(default)r)")
    demo_p.add_argument("--steps", type=int, default=DEMO_STEPS, help="denoising steps (default: %(default)s)")
    demo_p.add_argument("--guidance", type=float, default=DEMO_GUIDANCE_SCALE,
                        help="CFG scale (default: %(default)s)")
    demo_p.add_argument("--size", type=int, default=64, help="image height and width in pixels (default: 64, the "
                                                              "training size)")
    demo_p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    demo_p.add_argument("--out", default="demo.png", help="(default: %(default)s)")
    demo_p.add_argument("--verbose", action="store_true", help="also print the workflow and the per-block trace")
    demo_p.add_argument("--quiet", action="store_true", help="no progress bar")
    demo_p.add_argument("--toy", action="store_true", help="run the model-free toy block graph instead")
    demo_p.add_argument("--num-points", type=int, default=512, help="(--toy) number of points")
    demo_p.set_defaults(func=_demo)
