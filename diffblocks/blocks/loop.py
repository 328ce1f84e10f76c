"""LoopSequentialPipelineBlocks: a loop wrapper whose sub-blocks run once per iteration on one BlockState."""

from __future__ import annotations

from typing import Any

from .composite import CompositeBlocks, locate_error
from .errors import BlockGraphError
from .io import BlockIO, merge_sequential
from .params import ConfigSpec, InputParam, OutputParam
from .state import BlockState
from .trace import current_tracer

__all__ = ["LoopSequentialPipelineBlocks"]


class LoopSequentialPipelineBlocks(CompositeBlocks):
    """Subclasses implement `__call__` with the loop and call `loop_step` each iteration.

    Sub-blocks are leaves called as `block(components, block_state, **kwargs)`; they share the loop's
    BlockState and neither read nor write the pipeline state themselves.
    """

    @property
    def loop_inputs(self) -> list[InputParam]:
        return []

    @property
    def loop_intermediate_outputs(self) -> list[OutputParam]:
        return []

    @property
    def loop_expected_components(self) -> list:
        return []

    @property
    def loop_expected_configs(self) -> list[ConfigSpec]:
        return []

    @property
    def loop_required_inputs(self) -> list[str]:
        return [p.name for p in self.loop_inputs if p.required and p.name]

    def _compute_io(self) -> BlockIO:
        for name, block in self.sub_blocks.items():
            if block.sub_blocks:
                raise BlockGraphError(
                    f"{type(self).__name__}: loop sub-block {name!r} ({type(block).__name__}) is a composite; "
                    f"loop sub-blocks must be leaf blocks"
                )
        head_inputs = list(self.loop_inputs)
        head = BlockIO(
            inputs=head_inputs,
            outputs=list(self.loop_intermediate_outputs),
            components=list(self.loop_expected_components),
            configs=list(self.loop_expected_configs),
            required=self.loop_required_inputs,
            owners={p.name: "" for p in head_inputs if p.name},
        )
        return merge_sequential(list(self.sub_blocks.items()), head=head)

    def loop_step(self, components: Any, block_state: BlockState, **kwargs: Any):
        """One iteration: every sub-block in order on the shared block state.

        The first call installs a specialised step function on the instance (it shadows this method) that
        holds the sub-blocks in closure cells; an edit of `sub_blocks` removes it (`_invalidate_up`).
        """
        return self._install_step()(components, block_state, **kwargs)

    def _install_step(self):
        io = self._io()
        blocks = tuple(block for _, block in io.children)
        owner = self

        def step(components: Any, block_state: BlockState, **kwargs: Any):
            try:
                for block in blocks:
                    components, block_state = block(components, block_state, **kwargs)
            except Exception as exc:
                locate_error(exc, owner._failing_child(exc))
                raise
            return components, block_state

        self.__dict__["loop_step"] = step
        return step

    def _failing_child(self, exc: BaseException) -> str:
        """Name of the sub-block whose call raised (found from the traceback, off the hot path)."""
        by_id = {id(block): name for name, block in self.sub_blocks.items()}
        tb = exc.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if owner is not self and id(owner) in by_id:
                return by_id[id(owner)]
            tb = tb.tb_next
        return "?"

    def set_block_state(self, state, block_state: BlockState) -> None:
        """Like a leaf, but sub-block outputs a zero-iteration loop never produced are not required."""
        io = self._io()
        fields = block_state.__dict__
        own = {o.name for o in self.loop_intermediate_outputs}
        for name, kwargs_type in io.write_plan:
            if name in fields:
                state.set(name, fields[name], kwargs_type)
            elif name in own:
                super().set_block_state(state, block_state)  # raises the missing-output error
        read = fields.get("_read", {})
        for name, _, _, kwargs_type in io.read_plan:
            value = fields.get(name)
            if value is not read.get(name):
                state.set(name, value, kwargs_type)

    # -- progress ---------------------------------------------------------------------------------------
    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self.__dict__["_progress_bar_config"] = dict(kwargs)

    def progress_bar(self, iterable=None, total: int | None = None):
        from tqdm.auto import tqdm

        config = {"desc": type(self).__name__, **self.__dict__.get("_progress_bar_config", {})}
        if iterable is not None:
            # a disabled bar would only add a generator frame per step: iterate the steps themselves
            bar = iterable if config.get("disable") is True else tqdm(iterable, total=total, **config)
            runner = current_tracer()
            steps = getattr(runner, "steps", None)
            # the runtime's executor checks for an interrupt before each step and reports step i of n
            return steps(self, bar) if steps is not None else bar
        return tqdm(total=total, **config)

    def __call__(self, components: Any, state):
        raise NotImplementedError(
            f"{type(self).__name__} must implement __call__(components, state): read the block state, loop "
            f"calling self.loop_step(components, block_state, ...), then set_block_state"
        )

    def _flatten_into(self, prefix, flat, active) -> None:
        flat[prefix or type(self).__name__] = self
        for out in self._io().outputs:
            active[out.name] = True
