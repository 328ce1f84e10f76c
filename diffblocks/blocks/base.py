"""ModularPipelineBlocks: one step of a pipeline, declared by its ports and run on a shared state."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .backend import backend
from .errors import BlockInputError, ComponentNotLoadedError
from .insertable_dict import InsertableDict
from .io import BlockIO, leaf_io
from .params import ConfigSpec, InputParam, OutputParam
from .state import BlockState, PipelineState, note_missing_field

if TYPE_CHECKING:
    import networkx

logger = logging.getLogger(__name__)

__all__ = ["ModularPipelineBlocks", "ComponentsNamespace", "text_of"]


def text_of(value: Any) -> str:
    """A description may be a property, a plain method (as in some documentation examples) or a string."""
    if callable(value):
        value = value()
    return value or ""


class ComponentsNamespace:
    """Components passed to a block run outside a pipeline: attribute access with a clear error."""

    def __init__(self, components: dict[str, Any] | None = None, config: dict[str, Any] | None = None) -> None:
        self.__dict__["_components"] = dict(components or {})
        self.__dict__["config"] = dict(config or {})

    def __getattr__(self, name: str) -> Any:
        components = self.__dict__["_components"]
        if name in components:
            return components[name]
        if name in self.__dict__["config"]:
            return self.__dict__["config"][name]
        raise ComponentNotLoadedError(
            f"No component {name!r} was given. Pass it when running the block, e.g. "
            f"block.run({{{name!r}: ...}}, ...); given: {sorted(components)}"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__["_components"][name] = value


class ModularPipelineBlocks:
    """A pipeline step. Subclasses declare ports as properties and implement `__call__`.

    The ports (`inputs`, `intermediate_outputs`, `expected_components`, `expected_configs`) are read once
    and cached; blocks are expected to declare static ports.
    """

    model_name: str | None = None
    workflow_map: dict[str, dict[str, Any]] | None = None
    _requirements: dict[str, str] | None = None

    # -- declared ports (override in subclasses) ------------------------------------------------
    @property
    def description(self) -> str:
        return ""

    @property
    def expected_components(self) -> list:
        return []

    @property
    def expected_configs(self) -> list[ConfigSpec]:
        return []

    @property
    def inputs(self) -> list[InputParam]:
        return []

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return []

    @property
    def outputs(self) -> list[OutputParam]:
        return self.intermediate_outputs

    # -- structure -----------------------------------------------------------------------------
    @property
    def sub_blocks(self) -> InsertableDict:
        subs = self.__dict__.get("_sub_blocks")
        return subs if subs is not None else InsertableDict()

    @property
    def is_skippable(self) -> bool:
        """Whether this block may not run at all for some inputs (an auto block without a default)."""
        return False

    def _compute_io(self) -> BlockIO:
        return leaf_io(self)

    def _io(self) -> BlockIO:
        """This block's port table, cached until an edit of its own tree drops it (see `_invalidate_up`)."""
        cached = self.__dict__.get("_io_cache")
        if cached is not None:
            return cached
        io = self._compute_io().finalize()
        self.__dict__["_io_cache"] = io
        return io

    def _invalidate_up(self) -> None:
        """Drop what this block and every block containing it derived from their children: an edit in one
        tree leaves every other tree's caches alone."""
        todo, seen = [self], set()
        while todo:
            block = todo.pop()
            if id(block) in seen:
                continue
            seen.add(id(block))
            block.__dict__.pop("_io_cache", None)
            block.__dict__.pop("loop_step", None)  # a loop's installed step function
            parents = block.__dict__.get("_parents")
            if parents:
                todo.extend(parents)

    def invalidate(self) -> None:
        """Forget cached ports (call after changing what a block declares at run time)."""
        self._invalidate_up()
        for child in self.sub_blocks.values():
            child.invalidate()

    # -- names ----------------------------------------------------------------------------------
    @property
    def required_inputs(self) -> list[str]:
        return list(self._io().required)

    @property
    def input_names(self) -> list[str]:
        return [p.name for p in self._io().inputs if p.name is not None]

    @property
    def intermediate_output_names(self) -> list[str]:
        return [o.name for o in self._io().outputs]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def component_names(self) -> list[str]:
        return [c.name for c in self._io().components]

    @property
    def config_names(self) -> list[str]:
        return [c.name for c in self._io().configs]

    @property
    def trigger_inputs(self) -> list[str]:
        names: dict[str, None] = {}
        for child in self.sub_blocks.values():
            names.update(dict.fromkeys(child.trigger_inputs))
        return list(names)

    # -- state I/O --------------------------------------------------------------------------------
    def get_block_state(self, state: PipelineState) -> BlockState:
        """This block's view of `state`: each declared input, or the block's own default when absent."""
        io = self._io()
        values = state.values
        block_state = BlockState()
        fields = block_state.__dict__
        for name, default, required, kwargs_type in io.read_plan:
            value = values.get(name)
            if value is None:
                if required:
                    raise BlockInputError(
                        f"Block {type(self).__name__!r} requires input {name!r}, but it is missing (None). "
                        f"Pass it to the pipeline or add a block that outputs it.",
                        block=type(self).__name__,
                        input_name=name,
                    )
                value = default
            fields[name] = value
            if kwargs_type is not None:
                fields.setdefault(kwargs_type, {})[name] = value
        for kwargs_type in io.group_plan:
            group = state.get_by_kwargs(kwargs_type)
            fields.update(group)
            fields[kwargs_type] = group
        fields["_read"] = dict(fields)
        return block_state

    def set_block_state(self, state: PipelineState, block_state: BlockState) -> None:
        """Push declared outputs, and inputs the block replaced, back into `state`."""
        io = self._io()
        fields = block_state.__dict__
        for name, kwargs_type in io.write_plan:
            if name not in fields:
                raise BlockInputError(
                    f"Block {type(self).__name__!r} declares output {name!r} but did not set it on its block "
                    f"state. Set `block_state.{name} = ...` before set_block_state, or remove it from "
                    f"intermediate_outputs.",
                    block=type(self).__name__,
                    input_name=name,
                )
            state.set(name, fields[name], kwargs_type)
        read = fields.get("_read", {})
        for name, _, _, kwargs_type in io.read_plan:
            value = fields.get(name)
            if value is not read.get(name):
                state.set(name, value, kwargs_type)

    # -- running ----------------------------------------------------------------------------------
    def __call__(self, components: Any, state: PipelineState):
        raise NotImplementedError(
            f"{type(self).__name__} does not implement __call__(self, components, state). A leaf block must "
            f"read its inputs with get_block_state, compute, and write outputs with set_block_state."
        )

    def run(self, components: Any = None, **inputs: Any) -> dict[str, Any]:
        """Run this block alone (tests, node UIs): inputs as keywords, returns {output name: value}.

        `components` may be None, a dict of components, or a ModularPipeline.
        """
        from .validation import check_inputs

        values = check_inputs(self, inputs, where=f"Block {type(self).__name__!r}")
        if components is None or isinstance(components, dict):
            components = ComponentsNamespace(components)
        state = PipelineState()
        io = self._io()
        for name, value in values.items():
            param = io.input_table.get(name)
            if param is None:  # a kwargs group passed as a dict
                for key, item in value.items():
                    state.set(key, item, name)
            else:
                state.set(name, value, param.kwargs_type)
        try:
            import torch

            with torch.no_grad():
                if hasattr(type(components), "_executor"):  # a pipeline: its executor (interrupt, progress, cache)
                    state = backend("run_block")(components, self, state)
                else:
                    _, state = self(components, state)
        except AttributeError as exc:
            note_missing_field(exc)
            raise
        return {o.name: state.values.get(o.name) for o in self.outputs}

    # -- selection ----------------------------------------------------------------------------------
    def _flatten_into(self, prefix: str, flat: InsertableDict, active: dict[str, Any]) -> None:
        flat[prefix or type(self).__name__] = self
        for out in self._io().outputs:
            active[out.name] = True

    def get_execution_blocks(self, *trigger_names: str, **inputs: Any) -> ModularPipelineBlocks | None:
        """The blocks that would run given these inputs (names, or name=value), flattened."""
        from .sequential import SequentialPipelineBlocks

        active = {name: True for name in trigger_names}
        active.update({k: v for k, v in inputs.items() if v is not None})
        flat = InsertableDict()
        self._flatten_into("", flat, active)
        if not flat:
            return None
        if len(flat) == 1 and not isinstance(self, SequentialPipelineBlocks):
            return next(iter(flat.values()))  # an auto block resolving to a single block, or a leaf itself
        return SequentialPipelineBlocks.from_blocks_dict(flat)

    @property
    def available_workflows(self) -> list[str]:
        return list(self._workflows())

    def _workflows(self) -> dict[str, Any]:
        return dict(self.workflow_map or getattr(self, "_workflow_map", None) or {})

    def get_workflow(self, name: str) -> ModularPipelineBlocks | None:
        workflows = self._workflows()
        if name not in workflows:
            raise KeyError(
                f"{type(self).__name__} has no workflow {name!r}; available: {sorted(workflows)}"
            )
        triggers = workflows[name]
        names = list(triggers) if not isinstance(triggers, dict) else [k for k, v in triggers.items() if v]
        return self.get_execution_blocks(*names)

    # -- documentation and graph -------------------------------------------------------------------------
    @property
    def doc(self) -> str:
        from .doc import make_doc

        return make_doc(self)

    def __repr__(self) -> str:
        from .doc import make_tree

        return make_tree(self)

    def graph(self) -> networkx.DiGraph:
        from .graph import build_graph

        return build_graph(self)

    def validate(self, inputs: list[str] | None = None) -> list:
        """Problems in the graph, found before any model loads (see `blocks.graph.Problem`)."""
        from .graph import validate

        return validate(self, inputs)

    def to_mermaid(self) -> str:
        from .graph import to_mermaid

        return to_mermaid(self)

    def node_spec(self) -> dict[str, Any]:
        from .graph import node_spec

        return node_spec(self)

    # -- pipelines and the Hub ------------------------------------------------------------------------
    def init_pipeline(self, repo_or_dir: str | None = None, components_manager: Any = None,
                      collection: str | None = None, **kwargs: Any):
        return backend("init_pipeline")(
            blocks=self,
            pretrained_model_name_or_path=repo_or_dir,
            components_manager=components_manager,
            collection=collection,
            **kwargs,
        )

    @classmethod
    def from_pretrained(cls, repo_or_dir: str, trust_remote_code: bool = False, **kwargs: Any) -> ModularPipelineBlocks:
        return backend("load_blocks")(repo_or_dir, trust_remote_code=trust_remote_code, expected_class=cls, **kwargs)

    def save_pretrained(self, save_directory: str, push_to_hub: bool = False, **kwargs: Any) -> None:
        backend("save_blocks")(self, save_directory, push_to_hub=push_to_hub, **kwargs)

    def __deepcopy__(self, memo):
        import copy

        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            # caches, parent links (set by the copied parent) and the annotation a pipeline's view sets
            if key in ("_io_cache", "loop_step", "_parents", "_pipeline_component_types"):
                continue
            new.__dict__[key] = copy.deepcopy(value, memo)
        subs = new.__dict__.get("_sub_blocks")
        if subs is not None and hasattr(subs, "attach"):
            subs.attach(new)
        return new
