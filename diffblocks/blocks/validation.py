"""Checking user inputs against a block's declared ports, once per call (never inside the denoise loop)."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from .errors import BlockInputError
from .hints import check_value, format_type
from .state import summarize_value

if TYPE_CHECKING:
    from .base import ModularPipelineBlocks

__all__ = ["check_inputs"]


def _owner(block: ModularPipelineBlocks, name: str) -> str:
    path = block._io().owners.get(name, "")
    return f"{type(block).__name__}.{path}" if path else type(block).__name__


def check_inputs(block: ModularPipelineBlocks, inputs: dict[str, Any], where: str) -> dict[str, Any]:
    """Validated (and mildly coerced) copy of `inputs`; raises BlockInputError naming block and input."""
    io = block._io()
    table = io.input_table
    groups = set(io.group_plan) | {p.kwargs_type for p in io.inputs if p.kwargs_type}
    checked: dict[str, Any] = {}
    unknown = [k for k in inputs if k not in table and k not in groups]
    if unknown:
        valid = sorted(table)
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, valid, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise BlockInputError(
            f"{where} got unknown input(s) {', '.join(hints)}. Valid inputs: {valid}",
            block=type(block).__name__,
            input_name=unknown[0],
        )
    for name, value in inputs.items():
        param = table.get(name)
        if param is None:
            if not isinstance(value, dict):
                raise BlockInputError(
                    f"{where}: {name!r} is a group of inputs and expects a dict of name -> value, "
                    f"got {type(value).__name__}",
                    block=type(block).__name__,
                    input_name=name,
                )
            checked[name] = value
            continue
        ok, coerced = check_value(value, param.type_hint)
        if not ok:
            raise BlockInputError(
                f"Block {_owner(block, name)!r}: input {name!r} expects {format_type(param.type_hint)}, "
                f"got {type(value).__name__} ({summarize_value(value)})",
                block=_owner(block, name),
                input_name=name,
            )
        checked[name] = coerced
    missing = [name for name in io.required if checked.get(name) is None]
    if missing:
        details = ", ".join(f"{n!r} (needed by {_owner(block, n)})" for n in missing)
        raise BlockInputError(
            f"{where} is missing required input(s): {details}",
            block=type(block).__name__,
            input_name=missing[0],
        )
    return checked
