"""`diffblocks inspect`: a preset's or repo's blocks, doc, data flow and validation."""

from __future__ import annotations

import argparse
import json

from .blocks_arg import NAMED_BLOCKS, resolve_blocks


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


def register(sub: argparse._SubParsersAction) -> None:
    inspect_p = sub.add_parser("inspect", help="print a preset's or repo's blocks, doc and data-flow graph")
    inspect_p.add_argument("target", help=f"a preset name ({', '.join(NAMED_BLOCKS)}), module:Class, or a repo/folder")
    inspect_p.add_argument("--format", choices=["text", "json"], default="text", help="json prints the node spec")
    inspect_p.set_defaults(func=_inspect)
