"""SequentialPipelineBlocks: children run one after another, each seeing what earlier ones wrote."""

from __future__ import annotations

from typing import Any

from .composite import CompositeBlocks, locate_error
from .insertable_dict import InsertableDict
from .io import BlockIO, merge_sequential
from .state import PipelineState
from .trace import current_tracer

__all__ = ["SequentialPipelineBlocks"]


class SequentialPipelineBlocks(CompositeBlocks):
    """Runs `sub_blocks` in order. Inputs produced by an earlier child are internal (see blocks/io.py)."""

    def _compute_io(self) -> BlockIO:
        return merge_sequential(list(self.sub_blocks.items()))

    def __call__(self, components: Any, state: PipelineState):
        tracer = current_tracer()
        for name, block in self._io().children:
            try:
                if tracer is None:
                    components, state = block(components, state)
                else:
                    components, state = tracer.run(name, block, components, state)
            except Exception as exc:
                locate_error(exc, name)
                raise
        return components, state

    def _flatten_into(self, prefix: str, flat: InsertableDict, active: dict[str, Any]) -> None:
        for name, block in self.sub_blocks.items():
            block._flatten_into(f"{prefix}.{name}" if prefix else name, flat, active)
