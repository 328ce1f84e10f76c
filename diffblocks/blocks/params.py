"""The ports of a block: what it reads (InputParam), writes (OutputParam) and is configured by (ConfigSpec)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["InputParam", "OutputParam", "ConfigSpec"]


@dataclass
class InputParam:
    """A value a block reads from the pipeline state: a user input or an earlier block's output.

    `name=None` with a `kwargs_type` means "every state value tagged with that kwargs_type".
    When the value is absent (None) the block falls back to *its own* `default`.
    """

    name: str | None = None
    type_hint: Any = None
    default: Any = None
    required: bool = False
    description: str = ""
    kwargs_type: str | None = None
    metadata: dict[str, Any] | None = None

    def __repr__(self) -> str:
        from .hints import format_type

        parts = [repr(self.name)]
        if self.type_hint is not None:
            parts.append(f"type={format_type(self.type_hint)}")
        parts.append("required" if self.required else f"default={self.default!r}")
        if self.kwargs_type:
            parts.append(f"kwargs_type={self.kwargs_type!r}")
        return f"InputParam({', '.join(parts)})"


@dataclass
class OutputParam:
    """A value a block writes to the pipeline state."""

    name: str
    type_hint: Any = None
    description: str = ""
    kwargs_type: str | None = None
    metadata: dict[str, Any] | None = None

    def __repr__(self) -> str:
        from .hints import format_type

        extra = f", type={format_type(self.type_hint)}" if self.type_hint is not None else ""
        kw = f", kwargs_type={self.kwargs_type!r}" if self.kwargs_type else ""
        return f"OutputParam({self.name!r}{extra}{kw})"


@dataclass
class ConfigSpec:
    """A pipeline-level setting shared by all blocks (stored in `pipe.config`)."""

    name: str
    default: Any = None
    description: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
