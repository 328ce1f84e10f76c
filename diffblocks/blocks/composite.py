"""What the three composite kinds share: children built from classes or instances, errors located by path."""

from __future__ import annotations

from typing import Any

from .base import ModularPipelineBlocks
from .insertable_dict import InsertableDict
from .state import note_missing_field

__all__ = ["CompositeBlocks", "locate_error"]


def locate_error(exc: BaseException, name: str) -> None:
    """Prefix the block path onto an exception escaping a child, once per level."""
    path = getattr(exc, "_diffblocks_path", None)
    if path is None:
        path = []
        try:
            exc._diffblocks_path = path  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            return
        note_missing_field(exc)
    path.insert(0, name)


def _instantiate(name: str, block: Any) -> ModularPipelineBlocks:
    if isinstance(block, type):
        if not issubclass(block, ModularPipelineBlocks):
            raise TypeError(f"sub-block {name!r}: {block.__name__} is not a ModularPipelineBlocks subclass")
        return block()
    if not isinstance(block, ModularPipelineBlocks):
        raise TypeError(f"sub-block {name!r}: expected a block class or instance, got {type(block).__name__}")
    return block


class CompositeBlocks(ModularPipelineBlocks):
    """A block made of named sub-blocks (`sub_blocks`, an InsertableDict of instances)."""

    block_classes: list = []
    block_names: list[str] = []

    def __init__(self) -> None:
        if len(self.block_classes) != len(self.block_names):
            raise ValueError(
                f"{type(self).__name__}: block_classes ({len(self.block_classes)}) and block_names "
                f"({len(self.block_names)}) must have the same length"
            )
        self.sub_blocks = dict(zip(self.block_names, self.block_classes))

    @property
    def sub_blocks(self) -> InsertableDict:
        return self.__dict__["_sub_blocks"]

    @sub_blocks.setter
    def sub_blocks(self, blocks: dict[str, Any]) -> None:
        subs = _WatchedSubBlocks()
        for name, block in blocks.items():
            subs[name] = block
        self.__dict__["_sub_blocks"] = subs

    @classmethod
    def from_blocks_dict(cls, blocks_dict: dict[str, Any], description: str | None = None) -> CompositeBlocks:
        """Build from {name: block class or instance}; classes are instantiated."""
        block = cls.__new__(cls)
        block.sub_blocks = blocks_dict
        if description is not None:
            block.__dict__["_description"] = description
        return block

    @property
    def description(self) -> str:
        return self.__dict__.get("_description", "")

    @property
    def expected_components(self) -> list:
        return self._io().components

    @property
    def expected_configs(self) -> list:
        return self._io().configs

    @property
    def inputs(self) -> list:
        return self._io().inputs

    @property
    def intermediate_outputs(self) -> list:
        return self._io().outputs

    @property
    def _requirements_tree(self) -> dict[str, Any]:
        return {name: block._requirements for name, block in self.sub_blocks.items() if block._requirements}


class _WatchedSubBlocks(InsertableDict):
    """sub_blocks: classes assigned into it are instantiated, so `sub_blocks[...] = SomeBlock` works too."""

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, _instantiate(key, value))

    def insert(self, key: str, value: Any, index: int) -> InsertableDict:
        return super().insert(key, _instantiate(key, value), index)

    def __reduce__(self):
        return (_WatchedSubBlocks, (), None, None, iter(self.items()))
