"""AutoPipelineBlocks: one branch runs, chosen by which trigger inputs are present."""

from __future__ import annotations

import logging
from typing import Any

from .composite import CompositeBlocks, locate_error
from .insertable_dict import InsertableDict
from .io import BlockIO, merge_branches
from .state import PipelineState
from .trace import current_tracer

logger = logging.getLogger(__name__)

__all__ = ["AutoPipelineBlocks"]


class AutoPipelineBlocks(CompositeBlocks):
    """Selects the first branch whose trigger input is present (not None).

    A `None` trigger marks the default branch. With no default and no trigger present the block is
    skipped, which is not an error. Selection depends only on presence, so the graph can be resolved
    statically (`get_execution_blocks`).
    """

    block_trigger_inputs: list[str | None] = []

    def __init__(self) -> None:
        if len(self.block_trigger_inputs) != len(self.block_classes):
            raise ValueError(
                f"{type(self).__name__}: block_trigger_inputs ({len(self.block_trigger_inputs)}) must have one "
                f"entry per block class ({len(self.block_classes)}); use None for the default branch"
            )
        if self.block_trigger_inputs.count(None) > 1:
            raise ValueError(f"{type(self).__name__}: at most one default branch (None trigger) is allowed")
        super().__init__()

    @classmethod
    def from_blocks_dict(cls, blocks_dict: dict[str, Any], description: str | None = None,
                         block_trigger_inputs: list[str | None] | None = None) -> AutoPipelineBlocks:
        block = super().from_blocks_dict(blocks_dict, description)
        triggers = list(block_trigger_inputs if block_trigger_inputs is not None else cls.block_trigger_inputs)
        if len(triggers) != len(blocks_dict):
            raise ValueError(
                f"{cls.__name__}.from_blocks_dict: give one trigger per block ({len(blocks_dict)}), got {triggers}"
            )
        block.__dict__["block_trigger_inputs"] = triggers
        return block

    @property
    def _triggers(self) -> list[str | None]:
        triggers = list(self.block_trigger_inputs)
        if len(triggers) != len(self.sub_blocks):
            raise ValueError(
                f"{type(self).__name__}: {len(self.sub_blocks)} branches but triggers {triggers}; "
                f"keep block_trigger_inputs in step with sub_blocks"
            )
        return triggers

    @property
    def default_block_name(self) -> str | None:
        for name, trigger in zip(self.sub_blocks, self._triggers):
            if trigger is None:
                return name
        return None

    @property
    def is_skippable(self) -> bool:
        return self.default_block_name is None

    @property
    def trigger_inputs(self) -> list[str]:
        names = dict.fromkeys(t for t in self._triggers if t is not None)
        for child in self.sub_blocks.values():
            names.update(dict.fromkeys(child.trigger_inputs))
        return list(names)

    def _compute_io(self) -> BlockIO:
        return merge_branches(list(self.sub_blocks.items()), self._triggers)

    def select_block(self, **inputs: Any) -> str | None:
        """Name of the branch to run: first present trigger wins, else the default (None = skip)."""
        default = None
        for name, trigger in zip(self.sub_blocks, self._triggers):
            if trigger is None:
                default = name
            elif inputs.get(trigger) is not None:
                return name
        return default

    def __call__(self, components: Any, state: PipelineState):
        values = state.values
        name = self.select_block(**{t: values.get(t) for t in self._triggers if t is not None})
        if name is None:
            logger.debug("%s: no trigger among %s present and no default; skipped", type(self).__name__,
                         [t for t in self._triggers if t])
            return components, state
        block = self.sub_blocks[name]
        tracer = current_tracer()
        try:
            if tracer is None:
                return block(components, state)
            return tracer.run(name, block, components, state)
        except Exception as exc:
            locate_error(exc, name)
            raise

    def _flatten_into(self, prefix: str, flat: InsertableDict, active: dict[str, Any]) -> None:
        name = self.select_block(**active)
        if name is not None:
            self.sub_blocks[name]._flatten_into(prefix or name, flat, active)
