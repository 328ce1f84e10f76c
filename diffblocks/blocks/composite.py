"""What the three composite kinds share: children built from classes or instances, errors located by path."""

from __future__ import annotations

import weakref
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
        old = self.__dict__.get("_sub_blocks")
        subs = _WatchedSubBlocks()
        for name, block in blocks.items():
            subs[name] = block
        if old is not None:
            old.detach()
        self.__dict__["_sub_blocks"] = subs
        subs.attach(self)

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
    """sub_blocks: classes assigned into it are instantiated, so `sub_blocks[...] = SomeBlock` works too.

    It knows its owner block: each child holds a weak link to the blocks containing it (`_parents`), and an edit
    drops the cached port tables of the owner and of every block above it, in this tree only.
    """

    _owner_ref: Any = None

    def attach(self, owner: ModularPipelineBlocks) -> None:
        self._owner_ref = weakref.ref(owner)
        for child in self.values():
            _parents(child).add(owner)
        owner._invalidate_up()

    def detach(self) -> None:
        owner = self._owner()
        if owner is not None:
            for child in self.values():
                _parents(child).discard(owner)
        self._owner_ref = None

    def _owner(self) -> ModularPipelineBlocks | None:
        return self._owner_ref() if self._owner_ref is not None else None

    def _edited(self) -> None:
        owner = self._owner()
        if owner is None:
            return
        children = {id(child) for child in self.values()}
        # parent links: every current child points at the owner; a removed one no longer does
        for child in self.values():
            _parents(child).add(owner)
        for child in self.__dict__.pop("_before", ()):
            if id(child) not in children:
                _parents(child).discard(owner)
        owner._invalidate_up()

    def _remember(self) -> None:
        if self._owner_ref is not None:
            self.__dict__["_before"] = list(self.values())

    def __setitem__(self, key: str, value: Any) -> None:
        self._remember()
        super().__setitem__(key, _instantiate(key, value))

    def insert(self, key: str, value: Any, index: int) -> InsertableDict:
        self._remember()
        return super().insert(key, _instantiate(key, value), index)

    def __delitem__(self, key: str) -> None:
        self._remember()
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        self._remember()
        return super().pop(key, *default)

    def popitem(self, last: bool = True):
        self._remember()
        return super().popitem(last)

    def clear(self) -> None:
        self._remember()
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._remember()
        super().update(*args, **kwargs)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._remember()
        return super().setdefault(key, default)

    def __reduce__(self):
        return (_WatchedSubBlocks, (), None, None, iter(self.items()))


def _parents(block: ModularPipelineBlocks) -> weakref.WeakSet:
    parents = block.__dict__.get("_parents")
    if parents is None:
        parents = block.__dict__["_parents"] = weakref.WeakSet()
    return parents
