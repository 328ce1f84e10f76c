"""What a block reads and writes, resolved once: the derived ports of composites and the fast tables
`get_block_state` / `set_block_state` use on every call.

Merge rules (documented in docs/blocks.md):
* Sequential: a child's input that an earlier child outputs is internal. The first declaration of an
  input wins for the composite's type, description and displayed default; when children disagree on the
  default, `metadata["defaults_by_block"]` records each one, and every child still applies its *own*
  default at run time (the pipeline never writes defaults into the state).
* A composite input is required when a child requires it and no earlier child can produce it. Outputs of
  a block that may be skipped (an auto block without a default branch) do not make an input internal:
  it stays a composite input, optional.
* Auto: inputs are the union of the branches; an input is required only when every branch requires it
  and there is a default branch.
* Outputs: union in order, first declaration wins (an entry with a kwargs_type beats one without).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .params import ConfigSpec, InputParam, OutputParam

if TYPE_CHECKING:
    from .base import ModularPipelineBlocks

__all__ = ["BlockIO", "merge_sequential", "merge_branches", "leaf_io"]


@dataclass
class BlockIO:
    inputs: list[InputParam]
    outputs: list[OutputParam]
    components: list  # ComponentSpec
    configs: list[ConfigSpec]
    required: list[str]
    owners: dict[str, str] = field(default_factory=dict)  # input name -> dotted path of the declaring block
    children: tuple = ()  # ((name, block), ...)

    # fast tables, filled by finalize()
    read_plan: tuple = ()  # (name, default, required, kwargs_type)
    group_plan: tuple = ()  # kwargs_types read as whole groups (InputParam(name=None, kwargs_type=...))
    write_plan: tuple = ()  # (name, kwargs_type)
    input_table: dict[str, InputParam] = field(default_factory=dict)

    def finalize(self) -> BlockIO:
        required = set(self.required)
        self.read_plan = tuple(
            (p.name, p.default, p.name in required, p.kwargs_type) for p in self.inputs if p.name is not None
        )
        self.group_plan = tuple(
            dict.fromkeys(p.kwargs_type for p in self.inputs if p.name is None and p.kwargs_type)
        )
        self.write_plan = tuple((o.name, o.kwargs_type) for o in self.outputs)
        self.input_table = {p.name: p for p in self.inputs if p.name is not None}
        return self


def _dedupe_components(specs: list) -> list:
    seen: dict[str, Any] = {}
    for spec in specs:
        if spec.name not in seen:
            seen[spec.name] = spec
    return list(seen.values())


def _dedupe_configs(specs: list[ConfigSpec]) -> list[ConfigSpec]:
    seen: dict[str, ConfigSpec] = {}
    for spec in specs:
        seen.setdefault(spec.name, spec)
    return list(seen.values())


def _add_output(outputs: list[OutputParam], index: dict[str, int], out: OutputParam) -> None:
    if out.name not in index:
        index[out.name] = len(outputs)
        outputs.append(out)
    elif out.kwargs_type and not outputs[index[out.name]].kwargs_type:
        outputs[index[out.name]] = out


def _record_default(param: InputParam, child_path: str, default: Any, first_path: str) -> InputParam:
    meta = dict(param.metadata or {})
    by_block = dict(meta.get("defaults_by_block") or {first_path: param.default})
    by_block.setdefault(child_path, default)
    meta["defaults_by_block"] = by_block
    return dataclasses.replace(param, metadata=meta)


def leaf_io(block: ModularPipelineBlocks) -> BlockIO:
    inputs = list(block.inputs)
    for p in inputs:
        if not isinstance(p, InputParam):
            raise TypeError(f"{type(block).__name__}.inputs must contain InputParam objects, got {p!r}")
        if p.name is None and not p.kwargs_type:
            raise TypeError(f"{type(block).__name__}: an InputParam needs a name or a kwargs_type")
    outputs = list(block.intermediate_outputs)
    for o in outputs:
        if not isinstance(o, OutputParam):
            raise TypeError(f"{type(block).__name__}.intermediate_outputs must contain OutputParam objects, got {o!r}")
    return BlockIO(
        inputs=inputs,
        outputs=outputs,
        components=_dedupe_components(list(block.expected_components)),
        configs=_dedupe_configs(list(block.expected_configs)),
        required=[p.name for p in inputs if p.required and p.name],
        owners={p.name: "" for p in inputs if p.name},
    )


def _join(prefix: str, rest: str) -> str:
    return f"{prefix}.{rest}" if rest else prefix


def merge_sequential(children: list[tuple[str, ModularPipelineBlocks]], head: BlockIO | None = None) -> BlockIO:
    """Ports of blocks run one after another (also the body of a loop, with `head` = the loop's own ports)."""
    inputs: list[InputParam] = list(head.inputs) if head else []
    input_index = {p.name: i for i, p in enumerate(inputs) if p.name}
    owners = dict(head.owners) if head else {}
    required = list(head.required) if head else []
    groups = {p.kwargs_type for p in inputs if p.name is None}
    outputs: list[OutputParam] = []
    output_index: dict[str, int] = {}
    components = list(head.components) if head else []
    configs = list(head.configs) if head else []
    # a loop wrapper writes its own outputs (e.g. the schedule) before its children run
    produced: set[str] = {o.name for o in head.outputs} if head else set()
    maybe_produced: set[str] = set()

    for name, child in children:
        cio = child._io()
        child_required = set(cio.required)
        for p in cio.inputs:
            if p.name is None:
                if p.kwargs_type not in groups:
                    groups.add(p.kwargs_type)
                    inputs.append(p)
                continue
            if p.name in produced:
                continue
            path = _join(name, cio.owners.get(p.name, ""))
            if p.name in input_index:
                existing = inputs[input_index[p.name]]
                if p.default is not None and existing.default is not None and p.default != existing.default:
                    inputs[input_index[p.name]] = _record_default(existing, path, p.default, owners[p.name])
                elif existing.default is None and p.default is not None:
                    inputs[input_index[p.name]] = dataclasses.replace(existing, default=p.default)
            else:
                input_index[p.name] = len(inputs)
                inputs.append(dataclasses.replace(p, required=False))
                owners[p.name] = path
            if p.name in child_required and p.name not in maybe_produced and p.name not in required:
                required.append(p.name)
        target = maybe_produced if child.is_skippable else produced
        for o in cio.outputs:
            target.add(o.name)
            _add_output(outputs, output_index, o)
        components.extend(cio.components)
        configs.extend(cio.configs)

    for i, p in enumerate(inputs):
        if p.name in required and not p.required:
            inputs[i] = dataclasses.replace(p, required=True)
    head_outputs = list(head.outputs) if head else []
    for o in outputs:
        if o.name not in {h.name for h in head_outputs}:
            head_outputs.append(o)
    return BlockIO(
        inputs=inputs,
        outputs=head_outputs,
        components=_dedupe_components(components),
        configs=_dedupe_configs(configs),
        required=required,
        owners=owners,
        children=tuple(children),
    )


def merge_branches(
    children: list[tuple[str, ModularPipelineBlocks]], triggers: list[str | None]
) -> BlockIO:
    """Ports of an auto block: any one branch may run."""
    inputs: list[InputParam] = []
    input_index: dict[str, int] = {}
    owners: dict[str, str] = {}
    outputs: list[OutputParam] = []
    output_index: dict[str, int] = {}
    components: list = []
    configs: list[ConfigSpec] = []
    required_sets = []
    groups: set[str] = set()

    for name, child in children:
        cio = child._io()
        required_sets.append(set(cio.required))
        for p in cio.inputs:
            if p.name is None:
                if p.kwargs_type not in groups:
                    groups.add(p.kwargs_type)
                    inputs.append(p)
                continue
            path = _join(name, cio.owners.get(p.name, ""))
            if p.name in input_index:
                existing = inputs[input_index[p.name]]
                if p.default != existing.default:
                    inputs[input_index[p.name]] = _record_default(existing, path, p.default, owners[p.name])
            else:
                input_index[p.name] = len(inputs)
                inputs.append(dataclasses.replace(p, required=False))
                owners[p.name] = path
        for o in cio.outputs:
            _add_output(outputs, output_index, o)
        components.extend(cio.components)
        configs.extend(cio.configs)

    for trigger, (name, _) in zip(triggers, children):
        if trigger is not None and trigger not in input_index:
            input_index[trigger] = len(inputs)
            inputs.append(InputParam(trigger, description=f"Selects the `{name}` branch when given."))
            owners[trigger] = ""

    has_default = None in triggers
    required = sorted(set.intersection(*required_sets)) if (required_sets and has_default) else []
    required = [p.name for p in inputs if p.name in required]
    for i, p in enumerate(inputs):
        if p.name in required:
            inputs[i] = dataclasses.replace(p, required=True)
    return BlockIO(
        inputs=inputs,
        outputs=outputs,
        components=_dedupe_components(components),
        configs=_dedupe_configs(configs),
        required=required,
        owners=owners,
        children=tuple(children),
    )
