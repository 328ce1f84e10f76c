"""Exceptions users see when a block graph or its inputs are wrong."""

from __future__ import annotations

__all__ = ["BlockInputError", "BlockGraphError", "ComponentNotLoadedError"]


class BlockInputError(ValueError):
    """An input is unknown, missing or of the wrong type; names the block, the input, expected vs got."""

    def __init__(self, message: str, *, block: str | None = None, input_name: str | None = None) -> None:
        super().__init__(message)
        self.block = block
        self.input_name = input_name


class BlockGraphError(ValueError):
    """A block graph is malformed (e.g. a loop containing composite blocks)."""


class ComponentNotLoadedError(RuntimeError):
    """A block needs a component that the pipeline has not loaded or been given."""
