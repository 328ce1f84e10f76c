"""An ordered dict you can insert into at a position: how presets and `sub_blocks` are edited."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

__all__ = ["InsertableDict"]


class InsertableDict(OrderedDict):
    """OrderedDict with `insert(key, value, index)`; item assignment to an existing key replaces in place.

    Every edit calls `_edited()` (a no-op here): a composite block's `sub_blocks` uses it to drop the port
    tables cached by that block and the blocks that contain it, and nothing else in the process.
    """

    def _edited(self) -> None:
        """Called after every structural edit."""

    def insert(self, key: str, value: Any, index: int) -> InsertableDict:
        items = [(k, v) for k, v in self.items() if k != key]
        index = max(0, min(index if index >= 0 else len(items) + 1 + index, len(items)))
        items.insert(index, (key, value))
        super().clear()
        for k, v in items:
            super().__setitem__(k, v)
        self._edited()
        return self

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._edited()

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._edited()

    def pop(self, key: str, *default: Any) -> Any:
        value = super().pop(key, *default)
        self._edited()
        return value

    def popitem(self, last: bool = True):
        item = super().popitem(last)
        self._edited()
        return item

    def clear(self) -> None:
        super().clear()
        self._edited()

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._edited()

    def setdefault(self, key: str, default: Any = None) -> Any:
        value = super().setdefault(key, default)
        self._edited()
        return value

    def move_to_end(self, key: str, last: bool = True) -> None:
        super().move_to_end(key, last)
        self._edited()

    def __repr__(self) -> str:
        if not self:
            return "InsertableDict()"
        lines = []
        for i, (key, value) in enumerate(self.items()):
            shown = value.__name__ if isinstance(value, type) else type(value).__name__ + "()"
            lines.append(f"  {i}: ({key!r}, {shown})")
        return "InsertableDict([\n" + ",\n".join(lines) + "\n])"
