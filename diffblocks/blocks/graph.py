"""The data-flow graph of a block tree: built, checked, drawn and exported before any model loads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .hints import format_type, types_compatible

if TYPE_CHECKING:
    import networkx

    from .base import ModularPipelineBlocks

__all__ = ["Problem", "build_graph", "validate", "to_mermaid", "node_spec"]


@dataclass(frozen=True)
class Problem:
    """One finding of `validate()`: kind is missing_input | maybe_missing_input | type_mismatch | output_shadowing."""

    kind: str
    block: str
    name: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"[{self.severity}] {self.kind} at {self.block!r} ({self.name!r}): {self.message}"


@dataclass
class _Unit:
    path: str
    block: ModularPipelineBlocks
    branch: str | None  # "auto_path:branch_name[trigger]" for blocks inside an auto branch


def _is_unit(block: ModularPipelineBlocks) -> bool:
    from .loop import LoopSequentialPipelineBlocks

    return not block.sub_blocks or isinstance(block, LoopSequentialPipelineBlocks)


def _units(block: ModularPipelineBlocks, prefix: str = "", branch: str | None = None) -> Iterator[_Unit]:
    from .auto import AutoPipelineBlocks

    if _is_unit(block):
        yield _Unit(prefix or type(block).__name__, block, branch)
        return
    triggers = block._triggers if isinstance(block, AutoPipelineBlocks) else None
    for i, (name, child) in enumerate(block.sub_blocks.items()):
        path = f"{prefix}.{name}" if prefix else name
        child_branch = branch
        if triggers is not None:
            trigger = triggers[i]
            child_branch = f"{prefix or type(block).__name__}:{name}[{trigger or 'default'}]"
        yield from _units(child, path, child_branch)


def build_graph(block: ModularPipelineBlocks) -> networkx.DiGraph:
    """DiGraph with block nodes ("block:<path>") and variable nodes ("var:<name>")."""
    import networkx as nx

    graph = nx.DiGraph(name=type(block).__name__)
    for unit in _units(block):
        io = unit.block._io()
        node = f"block:{unit.path}"
        graph.add_node(node, kind="block", path=unit.path, cls=type(unit.block).__name__, branch=unit.branch)
        for p in io.inputs:
            var = f"var:{p.name or '**' + str(p.kwargs_type)}"
            graph.add_node(var, kind="variable", name=p.name or f"**{p.kwargs_type}")
            graph.add_edge(var, node, role="input", required=p.name in io.required, type=format_type(p.type_hint))
        for o in io.outputs:
            var = f"var:{o.name}"
            graph.add_node(var, kind="variable", name=o.name)
            graph.add_edge(node, var, role="output", type=format_type(o.type_hint))
    top = block._io()
    for p in top.inputs:
        var = f"var:{p.name or '**' + str(p.kwargs_type)}"
        if var in graph:
            graph.nodes[var]["pipeline_input"] = True
            graph.nodes[var]["required"] = p.name in top.required
    return graph


def validate(block: ModularPipelineBlocks, inputs: list[str] | None = None) -> list[Problem]:
    """Walk the tree in execution order and report problems.

    With `inputs` (the names the caller will pass), a required input that neither the caller nor an
    earlier block provides is an error. Without it, names nobody produces are taken to be user inputs,
    and only inputs produced exclusively *downstream* (an ordering bug) are errors.
    """
    from .auto import AutoPipelineBlocks

    units = list(_units(block))
    produced_anywhere: dict[str, list[str]] = {}
    for unit in units:
        for o in unit.block._io().outputs:
            produced_anywhere.setdefault(o.name, []).append(unit.path)
    provided = set(inputs) if inputs is not None else None
    problems: list[Problem] = []

    def check_unit(unit: _Unit, produced: dict[str, tuple], maybe: dict[str, tuple], triggers: frozenset) -> None:
        io = unit.block._io()
        # a trigger that an earlier branch outputs implies that branch's own triggers were present
        implied = triggers.union(*(maybe[t][3] for t in triggers if t in maybe))
        for p in io.inputs:
            if p.name is None:
                continue
            source = produced.get(p.name) or maybe.get(p.name)
            if p.name in io.required and p.name not in produced:
                given = provided is not None and p.name in provided
                # A branch selected by a trigger the skippable producer also outputs (or by the value
                # itself) only runs when that producer ran: not a problem.
                correlated = p.name in maybe and (p.name in triggers or bool(implied & (maybe[p.name][2] | maybe[p.name][3])))
                if p.name in maybe and not given and not correlated:
                    problems.append(Problem(
                        "maybe_missing_input", unit.path, p.name,
                        f"required input is produced only by a block that may be skipped ({maybe[p.name][0]})",
                        "warning"))
                elif p.name not in maybe and not given:
                    later = [w for w in produced_anywhere.get(p.name, []) if w != unit.path]
                    if provided is not None:
                        problems.append(Problem(
                            "missing_input", unit.path, p.name,
                            "required input is neither given nor produced by an earlier block"
                            + (f" (only later by {later})" if later else "")))
                    elif later:
                        problems.append(Problem(
                            "missing_input", unit.path, p.name,
                            f"required input is produced only downstream by {later}; reorder the blocks"))
            if (source is not None and p.type_hint is not None and source[1] is not None
                    and not types_compatible(source[1], p.type_hint)):
                problems.append(Problem(
                    "type_mismatch", unit.path, p.name,
                    f"{source[0]!r} outputs {format_type(source[1])} but this block expects "
                    f"{format_type(p.type_hint)}"))
        own_inputs = {p.name for p in io.inputs}
        for o in io.outputs:
            earlier = produced.get(o.name)  # a value a skippable branch may produce is an alternative, not shadowed
            if earlier is not None and o.name not in own_inputs and earlier[0] != unit.path:
                problems.append(Problem(
                    "output_shadowing", unit.path, o.name,
                    f"overwrites the value {earlier[0]!r} produced without reading it", "warning"))

    def walk(node: ModularPipelineBlocks, prefix: str, produced: dict, maybe: dict, triggers: frozenset) -> None:
        if _is_unit(node):
            unit = _Unit(prefix or type(node).__name__, node, None)
            check_unit(unit, produced, maybe, triggers)
            outputs = frozenset(o.name for o in node._io().outputs)
            for o in node._io().outputs:
                produced[o.name] = (unit.path, o.type_hint, outputs, triggers)
            return
        if isinstance(node, AutoPipelineBlocks):
            branch_results = []
            for (name, child), trigger in zip(node.sub_blocks.items(), node._triggers):
                p2, m2 = dict(produced), dict(maybe)
                branch_triggers = triggers | {trigger} if trigger is not None else triggers
                walk(child, f"{prefix}.{name}" if prefix else name, p2, m2, branch_triggers)
                branch_results.append((p2, m2))
            all_names = set().union(*(set(p) for p, _ in branch_results)) if branch_results else set()
            for name in all_names:
                in_all = all(name in p for p, _ in branch_results)
                entries = [p[name] for p, _ in branch_results if name in p]
                # what any producing branch outputs / is selected by, for the correlation rule above
                entry = (entries[0][0], entries[0][1], frozenset().union(*(e[2] for e in entries)),
                         frozenset().union(*(e[3] for e in entries)))
                if in_all and not node.is_skippable:
                    produced[name] = entry
                elif name not in produced:
                    maybe[name] = entry
            return
        for name, child in node.sub_blocks.items():
            walk(child, f"{prefix}.{name}" if prefix else name, produced, maybe, triggers)

    walk(block, "", {}, {}, frozenset())
    # the same finding from several auto branches is reported once
    unique: dict[tuple, Problem] = {}
    for problem in problems:
        unique.setdefault((problem.kind, problem.block, problem.name), problem)
    return list(unique.values())


def _mermaid_label(text: str) -> str:
    return text.replace('"', "'")


def to_mermaid(block: ModularPipelineBlocks) -> str:
    """A Mermaid flowchart: blocks as boxes, values as rounded nodes, dashed edges for optional inputs."""
    graph = build_graph(block)
    ids: dict[str, str] = {}
    lines = ["flowchart LR"]
    for i, (node, data) in enumerate(graph.nodes(data=True)):
        ids[node] = f"n{i}"
        if data["kind"] == "block":
            label = f"{data['path']}<br/><i>{data['cls']}</i>"
            lines.append(f'    n{i}["{_mermaid_label(label)}"]')
        else:
            lines.append(f'    n{i}(["{_mermaid_label(data["name"])}"])')
    for src, dst, data in graph.edges(data=True):
        arrow = "-->" if data.get("role") == "output" or data.get("required") else "-.->"
        lines.append(f"    {ids[src]} {arrow} {ids[dst]}")
    return "\n".join(lines) + "\n"


def _json_default(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def node_spec(block: ModularPipelineBlocks) -> dict[str, Any]:
    """JSON-serialisable description of a block's ports, for node-based UIs."""
    from .base import text_of

    io = block._io()
    return {
        "block": type(block).__name__,
        "description": text_of(block.description),
        "inputs": [
            {
                "name": p.name if p.name is not None else f"**{p.kwargs_type}",
                "type": format_type(p.type_hint),
                "required": p.name in io.required,
                "default": _json_default(p.default),
                "description": p.description or "",
                "kwargs_type": p.kwargs_type,
                "metadata": _json_default(p.metadata),
            }
            for p in io.inputs
        ],
        "outputs": [
            {"name": o.name, "type": format_type(o.type_hint), "description": o.description or "",
             "kwargs_type": o.kwargs_type}
            for o in block.outputs
        ],
        "components": [
            {
                "name": spec.name,
                "type": format_type(spec.type_hint) if spec.type_hint is not None else "Any",
                "description": spec.description or "",
                "default_creation_method": spec.default_creation_method,
                "pretrained_model_name_or_path": spec.pretrained_model_name_or_path,
                "subfolder": spec.subfolder,
            }
            for spec in io.components
        ],
        "configs": [
            {"name": c.name, "default": _json_default(c.default), "description": c.description or ""}
            for c in io.configs
        ],
        "trigger_inputs": block.trigger_inputs,
        "sub_blocks": list(block.sub_blocks),
    }
