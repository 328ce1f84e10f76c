"""The `diffblocks` command: inspect block graphs and repos, generate images, run the demo."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import Any

__all__ = ["main", "resolve_blocks"]

# short names `diffblocks inspect NAME` understands: name -> (module, blocks class)
NAMED_BLOCKS: dict[str, tuple[str, str]] = {
    "toy": ("diffblocks.presets.toy", "ToyDiffusionBlocks"),
    "sd": ("diffblocks.presets.sd", "StableDiffusionAutoBlocks"),
    "sdxl": ("diffblocks.presets.sdxl", "StableDiffusionXLAutoBlocks"),
    "flux": ("diffblocks.presets.flux", "FluxAutoBlocks"),
}


def resolve_blocks(target: str) -> Any:
    """A blocks instance from a short name, `module:Class` / `module.Class`, or a repo folder / id."""
    from .blocks.base import ModularPipelineBlocks

    if target in NAMED_BLOCKS:
        module, name = NAMED_BLOCKS[target]
        return getattr(importlib.import_module(module), name)()
    if ":" in target or (target.count(".") >= 1 and not target.startswith((".", "/")) and "/" not in target):
        module_name, _, class_name = target.replace(":", ".").rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise SystemExit(f"diffblocks: cannot import blocks {target!r}: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, ModularPipelineBlocks)):
            raise SystemExit(f"diffblocks: {target!r} is not a ModularPipelineBlocks class")
        return cls()
    from .runtime.pipeline import ModularPipeline

    return ModularPipeline.from_pretrained(target)._blocks


def _inspect(args: argparse.Namespace) -> int:
    blocks = resolve_blocks(args.target)
    if args.format == "json":
        print(json.dumps(blocks.node_spec(), indent=2))
        return 0
    print(repr(blocks))
    print()
    print(blocks.doc)
    print("Data flow (Mermaid):")
    print(blocks.to_mermaid())
    problems = blocks.validate()
    print("Validation:", "no problems" if not problems else "")
    for problem in problems:
        print(f"  {problem}")
    return 0


def _toy_demo(args: argparse.Namespace) -> int:
    from .presets.toy import ToyDiffusionBlocks

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

    from .presets.sd.demo import build_demo_folder
    from .runtime.pipeline import ModularPipeline

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


def _generate(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from .runtime.pipeline import ModularPipeline

    pipe = ModularPipeline.from_pretrained(args.model)
    pipe.load_components()
    kwargs: dict[str, Any] = {"prompt": args.prompt, "num_inference_steps": args.steps,
                              "generator": torch.Generator().manual_seed(args.seed)}
    for name in ("negative_prompt", "guidance_scale", "height", "width", "strength", "num_images_per_prompt"):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    if args.image:
        kwargs["image"] = Image.open(args.image).convert("RGB")
    if args.mask:
        if not args.image:
            raise SystemExit("diffblocks generate: --mask needs --image (the image to inpaint)")
        kwargs["mask_image"] = Image.open(args.mask).convert("L")
    pipe.set_progress_bar_config(disable=args.quiet)
    images = pipe(output="images", **kwargs)
    stem, dot, ext = args.out.rpartition(".")
    for i, image in enumerate(images):
        path = args.out if len(images) == 1 else f"{stem or ext}-{i}{dot}{ext if stem else 'png'}"
        image.save(path)
        print(f"Saved {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diffblocks", description="Typed, reusable blocks for diffusion pipelines.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    inspect_p = sub.add_parser("inspect", help="print a preset's or repo's blocks, doc and data-flow graph")
    inspect_p.add_argument("target", help=f"a preset name ({', '.join(NAMED_BLOCKS)}), module:Class, or a repo/folder")
    inspect_p.add_argument("--format", choices=["text", "json"], default="text", help="json prints the node spec")
    inspect_p.set_defaults(func=_inspect)

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

    gen_p = sub.add_parser("generate", help="generate images with an SD / SDXL folder or repo (model_index.json)")
    gen_p.add_argument("--model", required=True, help="diffusers-format folder or Hub repo id")
    gen_p.add_argument("--prompt", required=True)
    gen_p.add_argument("--negative-prompt", dest="negative_prompt")
    gen_p.add_argument("--image", help="init image: image-to-image (or inpainting with --mask)")
    gen_p.add_argument("--mask", help="inpainting mask (white = repaint)")
    gen_p.add_argument("--steps", type=int, default=30)
    gen_p.add_argument("--guidance", dest="guidance_scale", type=float)
    gen_p.add_argument("--strength", type=float)
    gen_p.add_argument("--height", type=int)
    gen_p.add_argument("--width", type=int)
    gen_p.add_argument("--num-images", dest="num_images_per_prompt", type=int)
    gen_p.add_argument("--seed", type=int, default=0)
    gen_p.add_argument("--out", default="out.png")
    gen_p.add_argument("--quiet", action="store_true", help="no progress bar")
    gen_p.set_defaults(func=_generate)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
