"""Human-readable renderings of a block: the generated docstring (`doc`) and the tree (`repr`)."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

from .hints import format_type

if TYPE_CHECKING:
    from .base import ModularPipelineBlocks

__all__ = ["make_doc", "make_tree", "format_default"]

_WIDTH = 110


def format_default(value: Any) -> str:
    if isinstance(value, type):
        return value.__name__
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _wrap(text: str, indent: str) -> list[str]:
    lines: list[str] = []
    for paragraph in (text or "").strip().splitlines() or [""]:
        wrapped = textwrap.wrap(paragraph, _WIDTH - len(indent)) or [""]
        lines.extend(indent + w for w in wrapped)
    return lines


def _default_text(param) -> str:
    by_block = (param.metadata or {}).get("defaults_by_block")
    if by_block:
        options = " or ".join(f"{format_default(v)} ({k})" for k, v in by_block.items())
        return f"defaults to {options}, depending on the block that reads it"
    return f"defaults to {format_default(param.default)}" if param.default is not None else "*optional*"


def _input_lines(params, indent: str) -> list[str]:
    lines = []
    for p in params:
        if p.name is None:
            lines.append(f"{indent}**{p.kwargs_type} (`dict`, *optional*):")
            lines.extend(_wrap(p.description or f"All values tagged `{p.kwargs_type}`.", indent + "    "))
            continue
        status = "*required*" if p.required else _default_text(p)
        lines.append(f"{indent}{p.name} (`{format_type(p.type_hint)}`, {status}):")
        if p.description:
            lines.extend(_wrap(p.description, indent + "    "))
    return lines


def _output_lines(params, indent: str) -> list[str]:
    lines = []
    for o in params:
        lines.append(f"{indent}{o.name} (`{format_type(o.type_hint)}`):")
        if o.description:
            lines.extend(_wrap(o.description, indent + "    "))
    return lines


def component_type_name(block: ModularPipelineBlocks, spec) -> str:
    """The declared type of a component; in a pipeline's `blocks`, the class it holds where that differs."""
    declared = format_type(spec.type_hint) if spec.type_hint is not None else "Any"
    held = block.__dict__.get("_pipeline_component_types", {}).get(spec.name)
    if held is None or held == declared:
        return declared
    return f"{held}, in this pipeline; the blocks declare {declared}"


def _component_line(block: ModularPipelineBlocks, spec, indent: str) -> str:
    type_name = component_type_name(block, spec)
    where = []
    for key in ("pretrained_model_name_or_path", "subfolder", "variant", "revision"):
        value = getattr(spec, key, None)
        if value:
            where.append(f"{key}={value}")
    if getattr(spec, "default_creation_method", "") == "from_config":
        where.append("created from config")
    suffix = f" [{', '.join(where)}]" if where else ""
    desc = f": {spec.description}" if getattr(spec, "description", None) else ""
    return f"{indent}{spec.name} (`{type_name}`){suffix}{desc}"


def make_doc(block: ModularPipelineBlocks) -> str:
    from .base import text_of

    io = block._io()
    lines = [f"class {type(block).__name__}", ""]
    description = text_of(block.description)
    if description:
        lines.extend(_wrap(description, "  "))
        lines.append("")
    triggers = block.trigger_inputs
    if triggers:
        lines.append(f"  Trigger inputs (select branches): {', '.join(triggers)}")
        lines.append("")
    workflows = block._workflows()
    if workflows:
        lines.append("  Supported workflows:")
        for name, needs in workflows.items():
            names = list(needs) if not isinstance(needs, dict) else [k for k, v in needs.items() if v]
            lines.append(f"    - `{name}`: requires {', '.join(f'`{n}`' for n in names)}")
        lines.append("")
    if io.components:
        lines.append("  Components:")
        lines.extend(_component_line(block, spec, "      ") for spec in io.components)
        lines.append("")
    if io.configs:
        lines.append("  Configs:")
        lines.extend(f"      {c.name} (default: {format_default(c.default)})" for c in io.configs)
        lines.append("")
    lines.append("  Inputs:")
    lines.extend(_input_lines(io.inputs, "      ") or ["      (none)"])
    lines.append("")
    lines.append("  Outputs:")
    lines.extend(_output_lines(block.outputs, "      ") or ["      (none)"])
    return "\n".join(lines).rstrip() + "\n"


def _tree_lines(block: ModularPipelineBlocks, indent: str) -> list[str]:
    from .base import text_of

    lines = []
    triggers = getattr(block, "_triggers", None)
    for i, (name, child) in enumerate(block.sub_blocks.items()):
        if triggers is not None:
            trigger = triggers[i]
            mark = "[default]" if trigger is None else f"[trigger: {trigger}]"
        else:
            mark = f"[{i}]"
        lines.append(f"{indent}{mark} {name} ({type(child).__name__})")
        description = text_of(child.description).strip().splitlines()
        if description:
            first = description[0]
            lines.append(f"{indent}    {first if len(first) <= 100 else first[:97] + '...'}")
        if child.sub_blocks:
            lines.extend(_tree_lines(child, indent + "    "))
    return lines


def make_tree(block: ModularPipelineBlocks) -> str:
    from .base import text_of

    header = type(block).__name__
    base_names = [c.__name__ for c in type(block).__mro__[1:3]]
    lines = [f"{header}("]
    lines.append(f"  Class: {' -> '.join([header] + [b for b in base_names if b != 'object'])}")
    description = text_of(block.description).strip()
    if description:
        lines.append("  Description:")
        lines.extend(_wrap(description, "    "))
    triggers = block.trigger_inputs
    if triggers:
        lines.append(f"  Trigger inputs: {triggers}")
    io = block._io()
    if io.components:
        lines.append("  Components: " + ", ".join(f"{c.name} ({component_type_name(block, c)})" for c in io.components))
    if io.configs:
        lines.append("  Configs: " + ", ".join(f"{c.name}={format_default(c.default)}" for c in io.configs))
    if block.sub_blocks:
        lines.append("  Sub-Blocks:")
        lines.extend(_tree_lines(block, "    "))
    else:
        lines.append("  Inputs: " + ", ".join(
            (p.name or f"**{p.kwargs_type}") + ("*" if p.required else "") for p in io.inputs))
        lines.append("  Outputs: " + ", ".join(o.name for o in block.outputs))
    lines.append(")")
    return "\n".join(lines)
