"""An ordered dict you can insert into at a position: how presets and `sub_blocks` are edited."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

__all__ = ["InsertableDict", "structure_generation"]

# Bumped on every edit of any InsertableDict, so composite blocks can cache what they derive from
# their children and know in O(1) whether any nested edit happened since.
_generation = [0]


def structure_generation() -> int:
    return _generation[0]


def _bump() -> None:
    _generation[0] += 1


class InsertableDict(OrderedDict):
    """OrderedDict with `insert(key, value, index)`; item assignment to an existing key replaces in place."""

    def insert(self, key: str, value: Any, index: int) -> InsertableDict:
        items = [(k, v) for k, v in self.items() if k != key]
        index = max(0, min(index if index >= 0 else len(items) + 1 + index, len(items)))
        items.insert(index, (key, value))
        super().clear()
        for k, v in items:
            super().__setitem__(k, v)
        _bump()
        return self

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        _bump()

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        _bump()

    def pop(self, key: str, *default: Any) -> Any:
        value = super().pop(key, *default)
        _bump()
        return value

    def popitem(self, last: bool = True):
        item = super().popitem(last)
        _bump()
        return item

    def clear(self) -> None:
        super().clear()
        _bump()

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        _bump()

    def setdefault(self, key: str, default: Any = None) -> Any:
        value = super().setdefault(key, default)
        _bump()
        return value

    def move_to_end(self, key: str, last: bool = True) -> None:
        super().move_to_end(key, last)
        _bump()

    def __repr__(self) -> str:
        if not self:
            return "InsertableDict()"
        lines = []
        for i, (key, value) in enumerate(self.items()):
            shown = value.__name__ if isinstance(value, type) else type(value).__name__ + "()"
            lines.append(f"  {i}: ({key!r}, {shown})")
        return "InsertableDict([\n" + ",\n".join(lines) + "\n])"
