"""The data that flows between blocks: one shared PipelineState, and each block's BlockState view of it."""

from __future__ import annotations

from typing import Any

__all__ = ["PipelineState", "BlockState", "summarize_value", "note_missing_field"]


def summarize_value(value: Any) -> str:
    """Short, readable rendering: tensors and arrays as dtype and shape, long lists shortened."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        kind = type(value).__name__
        device = getattr(value, "device", None)
        where = f", device={device}" if device is not None and str(device) != "cpu" else ""
        return f"{kind}(dtype={dtype}, shape={tuple(shape)}{where})"
    if isinstance(value, (list, tuple)):
        items = [summarize_value(v) for v in value[:3]]
        more = f", ... ({len(value)} items)" if len(value) > 3 else ""
        open_, close = ("[", "]") if isinstance(value, list) else ("(", ")")
        return open_ + ", ".join(items) + more + close
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {summarize_value(v)}" for k, v in list(value.items())[:5]) + "}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class PipelineState:
    """The single namespace of one pipeline call: user inputs and every block's outputs, by name.

    `kwargs_mapping` groups names by `kwargs_type` (e.g. all "denoiser_input_fields").
    """

    __slots__ = ("values", "kwargs_mapping", "trace")

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self.values: dict[str, Any] = dict(values or {})
        self.kwargs_mapping: dict[str, list[str]] = {}
        self.trace = None

    def set(self, key: str, value: Any, kwargs_type: str | None = None) -> None:
        self.values[key] = value
        if kwargs_type is not None:
            names = self.kwargs_mapping.setdefault(kwargs_type, [])
            if key not in names:
                names.append(key)

    def get(self, keys: str | list[str] | tuple[str, ...], default: Any = None) -> Any:
        if isinstance(keys, str):
            return self.values.get(keys, default)
        return {k: self.values.get(k, default) for k in keys}

    def get_by_kwargs(self, kwargs_type: str) -> dict[str, Any]:
        return {name: self.values.get(name) for name in self.kwargs_mapping.get(kwargs_type, ())}

    def to_dict(self) -> dict[str, Any]:
        return {"values": dict(self.values), "kwargs_mapping": {k: list(v) for k, v in self.kwargs_mapping.items()}}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(f"PipelineState has no value {name!r}; it holds: {sorted(self.values)}") from None

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def __deepcopy__(self, memo):
        import copy

        new = PipelineState(copy.deepcopy(self.values, memo))
        new.kwargs_mapping = {k: list(v) for k, v in self.kwargs_mapping.items()}
        return new

    def __repr__(self) -> str:
        lines = ["PipelineState("]
        for key, value in self.values.items():
            lines.append(f"  {key}: {summarize_value(value)}")
        if self.kwargs_mapping:
            lines.append("  kwargs_mapping: " + ", ".join(f"{k}={v}" for k, v in self.kwargs_mapping.items()))
        lines.append(")")
        return "\n".join(lines)


class BlockState:
    """One block's view of the state: the values it declared, as attributes.

    Reading a name the block did not declare raises AttributeError (the pipeline adds a note listing the
    declared fields; no `__getattr__` here, so attribute access stays on CPython's fast path in the denoise
    loop); `state["name"]` returns None for absent keys (the Modular Diffusers behaviour).
    """

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    def __getitem__(self, key: str) -> Any:
        return self.__dict__.get(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.__dict__[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __repr__(self) -> str:
        body = "\n".join(f"  {k}: {summarize_value(v)}" for k, v in self.as_dict().items())
        return f"BlockState(\n{body}\n)" if body else "BlockState()"


def note_missing_field(exc: BaseException) -> None:
    """Explain an AttributeError from reading an undeclared BlockState field (once per exception)."""
    if not isinstance(exc, AttributeError) or not isinstance(getattr(exc, "obj", None), BlockState):
        return
    if getattr(exc, "_diffblocks_field_noted", False) or not hasattr(exc, "add_note"):
        return
    fields = [k for k in exc.obj.__dict__ if not k.startswith("_")]
    exc.add_note(f"BlockState has no field {exc.name!r}. Declared fields: {fields}. Declare it in the block's "
                 f"`inputs` (InputParam) or assign it before reading.")
    exc._diffblocks_field_noted = True
