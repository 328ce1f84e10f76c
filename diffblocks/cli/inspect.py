"""`diffblocks inspect`: a preset's or repo's blocks as a readable tree with a data-flow summary and the
validation result; the full doc, Mermaid or JSON node specs behind `--format`."""

from __future__ import annotations

import argparse
import json
import os
import textwrap
from typing import Any

from .blocks_arg import NAMED_BLOCKS, resolve_blocks

FORMATS = ("text", "doc", "mermaid", "json")


def _alternatives(a: str, b: str, autos: set[str]) -> bool:
    """Two steps are alternatives when they sit in different branches of one auto block (only one runs)."""
    pa, pb = a.split("."), b.split(".")
    common = 0
    while common < min(len(pa), len(pb)) and pa[common] == pb[common]:
        common += 1
    return common < min(len(pa), len(pb)) and ".".join(pa[:common]) in autos


def _latest_producers(history: list[str], path: str, autos: set[str]) -> list[str]:
    """The steps whose output `path` reads: the latest producer that can run together with it, and the other
    branches of its auto block (any of which may have run)."""
    found: list[str] = []
    for source in reversed(history):
        if _alternatives(source, path, autos):
            continue
        if found and not all(_alternatives(source, other, autos) for other in found):
            break
        found.append(source)
    return found[::-1]


def _sources(paths: list[str]) -> str:
    if len(paths) > 1:  # branches of one auto block: name the block
        common = os.path.commonprefix([p.split(".") for p in paths])
        if common:
            return ".".join(common) + ".*"
    return " | ".join(paths)


def data_flow_lines(blocks: Any, width: int = 118) -> list[str]:
    """One entry per step in execution order: what it reads (and from which earlier step), what it writes."""
    graph = blocks.graph()
    steps = [data for _, data in graph.nodes(data=True) if data["kind"] == "block"]
    autos = {data["branch"].split(":", 1)[0] for data in steps if data.get("branch")}
    producers: dict[str, list[str]] = {}
    lines = []
    for node, data in graph.nodes(data=True):
        if data["kind"] != "block":
            continue
        path = data["path"]
        branch = data.get("branch")
        when = f"  [runs when {branch.split('[', 1)[1].rstrip(']')} selects it]" if branch else ""
        lines.append(f"  {path} ({data['cls']}){when}")
        reads = []
        for var, _, edge in graph.in_edges(node, data=True):
            name = graph.nodes[var]["name"]
            sources = _latest_producers(producers.get(name, []), path, autos)
            reads.append(name + ("*" if edge.get("required") else "") + (f" <- {_sources(sources)}" if sources else ""))
        writes = [graph.nodes[var]["name"] for _, var in graph.out_edges(node)]
        lines.extend(textwrap.wrap(", ".join(reads) or "-", width, initial_indent="      reads:  ",
                                   subsequent_indent="              "))
        lines.extend(textwrap.wrap(", ".join(writes) or "-", width, initial_indent="      writes: ",
                                   subsequent_indent="              "))
        for name in writes:
            producers.setdefault(name, []).append(path)
    return lines


def _text(blocks: Any) -> None:
    print(repr(blocks))
    print()
    print("Data flow (execution order; * = required, <- = produced by that earlier step, else given by the caller):")
    print("\n".join(data_flow_lines(blocks)))
    print()
    required = blocks._io().required
    inputs = ", ".join(n + ("*" if n in required else "") for n in blocks.input_names)
    print("\n".join(textwrap.wrap(inputs, 118, initial_indent="Pipeline inputs:  ", subsequent_indent="    ")))
    outputs = ", ".join(blocks.intermediate_output_names)
    print("\n".join(textwrap.wrap(outputs, 118, initial_indent="Pipeline outputs: ", subsequent_indent="    ")))
    problems = blocks.validate()
    print("Validation:", "no problems" if not problems else "")
    for problem in problems:
        print(f"  {problem}")
    print()
    print("(--format doc: every input and output described; --format mermaid / json: the graph as a Mermaid "
          "flowchart / node specs)")


def _inspect(args: argparse.Namespace) -> int:
    blocks = resolve_blocks(args.target)
    if args.format == "json":
        print(json.dumps(blocks.node_spec(), indent=2))
    elif args.format == "mermaid":
        print(blocks.to_mermaid(), end="")
    elif args.format == "doc":
        print(blocks.doc, end="")
    else:
        _text(blocks)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    inspect_p = sub.add_parser("inspect", help="print a preset's or repo's blocks as a tree with a data-flow summary "
                                               "(Mermaid, JSON or the full doc with --format)")
    inspect_p.add_argument("target", help=f"a preset name ({', '.join(NAMED_BLOCKS)}), module:Class, or a repo/folder")
    inspect_p.add_argument("--format", choices=FORMATS, default="text",
                           help="text: tree, data flow and validation; doc: the full documentation; mermaid: a "
                                "Mermaid flowchart; json: the node specs (default: %(default)s)")
    inspect_p.set_defaults(func=_inspect)
