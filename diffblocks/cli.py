"""The `diffblocks` command: inspect block graphs and repos, run the demo."""

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


def _demo(args: argparse.Namespace) -> int:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diffblocks", description="Typed, reusable blocks for diffusion pipelines.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    inspect_p = sub.add_parser("inspect", help="print a preset's or repo's blocks, doc and data-flow graph")
    inspect_p.add_argument("target", help=f"a preset name ({', '.join(NAMED_BLOCKS)}), module:Class, or a repo/folder")
    inspect_p.add_argument("--format", choices=["text", "json"], default="text", help="json prints the node spec")
    inspect_p.set_defaults(func=_inspect)

    demo_p = sub.add_parser("demo", help="build and run a small block graph end to end, with its trace")
    demo_p.add_argument("--num-points", type=int, default=512)
    demo_p.add_argument("--seed", type=int, default=0)
    demo_p.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
