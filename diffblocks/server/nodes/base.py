"""What a node is: its ComfyUI-style declaration (input types, return types, category) and how it runs.

A node class declares, as ComfyUI's node classes do:
- `input_types(paths)` -> `{"required": {name: spec}, "optional": {...}, "hidden": {...}}`, each spec in ComfyUI's
  format: `["INT", {"default": 20, "min": 1, "max": 10000}]`, `["STRING", {"multiline": True}]`, a COMBO as
  `[[value, ...], {...}]`, a socket as `["MODEL"]`; lists that depend on files (checkpoints, input images) are read
  from `paths` each time;
- `RETURN_TYPES`, `RETURN_NAMES`, `OUTPUT_NODE`, `CATEGORY`, `DESCRIPTION`, `DISPLAY_NAME`;
- `check(inputs, paths)` for validation beyond the specs (ComfyUI's VALIDATE_INPUTS): a list of
  `(input_name, message)` problems with the constant inputs;
- `fingerprint(inputs, paths)`: what besides its inputs decides the output (ComfyUI's IS_CHANGED), e.g. the
  bytes of an input image file; it joins the node's cache signature;
- `run(ctx, **inputs)`: returns a tuple (one value per return type) or a `NodeOutput` with a `ui` dict.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["Node", "NodeOutput", "ServerPaths", "combo", "float_spec", "int_spec", "socket", "string_spec"]

MAX_SEED = 0xFFFFFFFFFFFFFFFF  # ComfyUI's seed range
MAX_RESOLUTION = 16384  # ComfyUI's nodes.MAX_RESOLUTION


@dataclass(frozen=True)
class ServerPaths:
    """The folders nodes read from and write to."""

    models_dir: Path
    input_dir: Path
    output_dir: Path
    temp_dir: Path

    @classmethod
    def of(cls, models_dir: str | os.PathLike, input_dir: str | os.PathLike, output_dir: str | os.PathLike,
           temp_dir: str | os.PathLike | None = None) -> ServerPaths:
        output = Path(output_dir).resolve()
        temp = Path(temp_dir).resolve() if temp_dir is not None else output.parent / "temp"
        return cls(Path(models_dir).resolve(), Path(input_dir).resolve(), output, temp)


@dataclass
class NodeOutput:
    """A node's result values plus what it shows in the UI (`{"images": [{"filename", "subfolder", "type"}]}`)."""

    result: tuple = ()
    ui: dict[str, Any] | None = None


def int_spec(default: int, min: int = 0, max: int = 2**31 - 1, step: int = 1, **extra: Any) -> list:
    return ["INT", {"default": default, "min": min, "max": max, "step": step, **extra}]


def float_spec(default: float, min: float = 0.0, max: float = 100.0, step: float = 0.01, round: float | None = None,
               **extra: Any) -> list:
    opts: dict[str, Any] = {"default": default, "min": min, "max": max, "step": step}
    if round is not None:
        opts["round"] = round
    return ["FLOAT", {**opts, **extra}]


def string_spec(default: str | None = None, multiline: bool = False, **extra: Any) -> list:
    opts: dict[str, Any] = {"multiline": True} if multiline else {}
    if default is not None:
        opts["default"] = default
    return ["STRING", {**opts, **extra}]


def combo(values: Sequence[Any], **extra: Any) -> list:
    return [list(values), dict(extra)] if extra else [list(values)]


def socket(type_name: str, **extra: Any) -> list:
    return [type_name, dict(extra)] if extra else [type_name]


class Node:
    """Base of every node class (see the module docstring)."""

    NAME: ClassVar[str] = ""  # the class_type; defaults to the class name
    DISPLAY_NAME: ClassVar[str | None] = None
    CATEGORY: ClassVar[str] = "sd"
    DESCRIPTION: ClassVar[str] = ""
    RETURN_TYPES: ClassVar[tuple[str, ...]] = ()
    RETURN_NAMES: ClassVar[tuple[str, ...] | None] = None
    OUTPUT_IS_LIST: ClassVar[tuple[bool, ...] | None] = None
    OUTPUT_TOOLTIPS: ClassVar[tuple[str, ...] | None] = None
    OUTPUT_NODE: ClassVar[bool] = False
    DEPRECATED: ClassVar[bool] = False
    EXPERIMENTAL: ClassVar[bool] = False
    PYTHON_MODULE: ClassVar[str] = "nodes"

    @classmethod
    def class_type(cls) -> str:
        return cls.NAME or cls.__name__

    @classmethod
    def input_types(cls, paths: ServerPaths | None) -> dict[str, dict[str, list]]:
        return {"required": {}}

    @classmethod
    def check(cls, inputs: dict[str, Any], paths: ServerPaths | None) -> list[tuple[str, str]]:
        return []

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], paths: ServerPaths | None) -> Any:
        return None

    def run(self, ctx: Any, **inputs: Any) -> tuple | NodeOutput:
        raise NotImplementedError(f"node {self.class_type()} does not define run()")
