"""Type hints of ports: rendering them, checking user values against them, comparing two of them.

Hints may be real types, typing constructs (`list[str] | str`, `Optional[torch.Tensor]`) or strings
such as `"PIL.Image"`. Strings are matched by qualified class name so checking never imports a library
the value does not already come from.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Union, get_args, get_origin

__all__ = ["format_type", "check_value", "types_compatible"]

_UNION_TYPES: tuple = (Union, types.UnionType)
_ALIASES = {
    "PIL.Image": "PIL.Image.Image",
    "Image.Image": "PIL.Image.Image",
    "np.ndarray": "numpy.ndarray",
    "Tensor": "torch.Tensor",
}


def format_type(hint: Any) -> str:
    if hint is None:
        return "Any"
    if isinstance(hint, str):
        return hint
    if hint is type(None):
        return "None"
    origin = get_origin(hint)
    if origin in _UNION_TYPES:
        return " | ".join(format_type(a) for a in get_args(hint))
    if origin is typing.Literal:
        return "Literal[" + ", ".join(repr(a) for a in get_args(hint)) + "]"
    if origin is not None:
        args = get_args(hint)
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(format_type(a) for a in args)}]" if args else name
    if isinstance(hint, type):
        module = hint.__module__
        if module in ("builtins",):
            return hint.__qualname__
        top = module.split(".")[0]
        if module == "torch":
            return f"torch.{hint.__qualname__}"
        if top == "numpy":
            return f"np.{hint.__qualname__}"
        if top == "PIL":
            return "PIL.Image.Image" if hint.__qualname__ == "Image" else f"PIL.{hint.__qualname__}"
        return hint.__qualname__
    return str(hint).replace("typing.", "")


def _string_union(hint: str) -> list[str]:
    """'torch.Tensor | None' -> ['torch.Tensor'] (None is always allowed for absent values)."""
    parts = [p.strip() for p in hint.split("|")]
    return [p for p in parts if p not in ("None", "NoneType")] or ["Any"]


def _qualnames(value: Any) -> set[str]:
    names = set()
    for cls in type(value).__mro__:
        names.add(f"{cls.__module__}.{cls.__qualname__}")
        names.add(cls.__qualname__)
    return names


def _matches_string(value: Any, hint: str) -> bool | None:
    """None when the string cannot be judged (unknown library not involved in the value)."""
    target = _ALIASES.get(hint, hint)
    if target in ("Any", "any", "object"):
        return True
    names = _qualnames(value)
    if target in names:
        return True
    short = target.rsplit(".", 1)[-1]
    module = target.rsplit(".", 1)[0] if "." in target else ""
    if short in names and (not module or any(n.startswith(module.split(".")[0] + ".") for n in names)):
        return True
    top = target.split(".")[0]
    if top in ("torch", "numpy", "PIL", "np"):
        return False
    if target in ("int", "float", "str", "bool", "list", "dict", "tuple"):
        return type(value).__name__ == target
    return None


def check_value(value: Any, hint: Any) -> tuple[bool, Any]:
    """(ok, value) with the coercions users expect (int-valued floats for ints); unknown hints pass."""
    if hint is None or hint is Any or value is None:
        return True, value
    if isinstance(hint, str):
        results = [_matches_string(value, part) for part in _string_union(hint)]
        return any(r is not False for r in results), value
    if isinstance(hint, typing.TypeVar):
        return True, value
    origin = get_origin(hint)
    if origin in _UNION_TYPES:
        for arg in get_args(hint):
            ok, coerced = check_value(value, arg)
            if ok:
                return True, coerced
        return False, value
    if origin is typing.Literal:
        return value in get_args(hint), value
    if origin is typing.Annotated:
        return check_value(value, get_args(hint)[0])
    if origin is not None:
        base = origin
        if base in (typing.Callable,) or getattr(base, "__name__", "") == "Callable":
            return callable(value), value
        if isinstance(base, type):
            if not isinstance(value, base):
                return False, value
            args = get_args(hint)
            if args and base in (list, set, frozenset):
                return all(check_value(v, args[0])[0] for v in value), value
            if args and base is tuple:
                if len(args) == 2 and args[1] is Ellipsis:
                    return all(check_value(v, args[0])[0] for v in value), value
                return len(args) == len(value) and all(check_value(v, a)[0] for v, a in zip(value, args)), value
            if args and base is dict and len(args) == 2:
                return all(check_value(k, args[0])[0] and check_value(v, args[1])[0] for k, v in value.items()), value
            return True, value
        return True, value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return True, value
    if hint is int and isinstance(value, float) and value.is_integer():
        return True, int(value)
    if hint is int and isinstance(value, bool):
        return False, value
    if isinstance(hint, type):
        if isinstance(value, hint):
            return True, value
        # numpy / torch scalar types for python numbers
        if hint in (int, float) and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            item = value.item()
            return check_value(item, hint)
        return False, value
    return True, value


def _leaf_names(hint: Any) -> set[str] | None:
    """Class names a hint admits, or None when it admits anything / cannot be resolved."""
    if hint is None or hint is Any:
        return None
    if isinstance(hint, str):
        parts = _string_union(hint)
        if any(p in ("Any", "any", "object") for p in parts):
            return None
        return {_ALIASES.get(p, p) for p in parts}
    origin = get_origin(hint)
    if origin in _UNION_TYPES:
        out: set[str] = set()
        for arg in get_args(hint):
            if arg is type(None):
                continue
            names = _leaf_names(arg)
            if names is None:
                return None
            out |= names
        return out
    if origin is not None:
        return _leaf_names(origin) if isinstance(origin, type) else None
    if isinstance(hint, type):
        if hint is object:
            return None
        return {f"{hint.__module__}.{hint.__qualname__}".replace("builtins.", "")}
    return None


_NUMERIC = {"int", "float", "bool"}


def types_compatible(produced: Any, consumed: Any) -> bool:
    """Whether a value declared as `produced` may feed an input declared as `consumed`."""
    a, b = _leaf_names(produced), _leaf_names(consumed)
    if a is None or b is None:
        return True
    if a & b:
        return True
    if a <= _NUMERIC and b & _NUMERIC:
        return True
    short_a = {n.rsplit(".", 1)[-1] for n in a}
    short_b = {n.rsplit(".", 1)[-1] for n in b}
    if short_a & short_b:
        return True
    # Real classes: allow subclass relations (e.g. a Tensor subclass feeding a Tensor input).
    for pa in _as_types(produced):
        for pb in _as_types(consumed):
            try:
                if issubclass(pa, pb) or issubclass(pb, pa):
                    return True
            except TypeError:
                continue
    return False


def _as_types(hint: Any) -> list[type]:
    origin = get_origin(hint)
    if origin in _UNION_TYPES:
        return [t for arg in get_args(hint) for t in _as_types(arg)]
    if origin is not None and isinstance(origin, type):
        return [origin]
    return [hint] if isinstance(hint, type) else []
