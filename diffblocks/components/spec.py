"""ComponentSpec: what a component is and where it comes from, so it can be loaded, created and recovered."""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import logging
from dataclasses import dataclass, field, fields
from typing import Any

from .trust import TRUSTED_LIBRARIES, TrustRemoteCodeError

logger = logging.getLogger(__name__)

__all__ = ["ComponentSpec", "resolve_type_hint", "type_hint_to_library", "LOAD_ID_FIELDS"]

LOAD_ID_FIELDS = ("pretrained_model_name_or_path", "subfolder", "variant", "revision")
# Libraries whose class names map onto ours (repos written by Modular Diffusers name diffusers classes).
_OUR_LIBRARY_ALIASES = ("diffusers", "diffblocks")


def _diffblocks_class(name: str) -> type | None:
    import diffblocks

    try:
        value = getattr(diffblocks, name)
    except AttributeError:
        return None
    return value if isinstance(value, type) else None


def _same_class(cls: Any, library: str, name: str) -> bool:
    return isinstance(cls, type) and cls.__name__ == name and cls.__module__.split(".")[0] == library


def resolve_type_hint(hint: Any, trust_remote_code: bool = False, declared: Any = None, where: str = "type hint") -> Any:
    """A class from a class, a `[library, ClassName]` pair, or a "library.ClassName" string.

    Without `trust_remote_code`, only libraries in `TRUSTED_LIBRARIES` are looked up (`diffusers` names map to
    the diffblocks class of the same name); a pair naming `declared` (the class the blocks already declare for
    this component) resolves to it without importing anything. Anything else raises TrustRemoteCodeError.
    """
    if hint is None or isinstance(hint, type):
        return hint
    if isinstance(hint, (list, tuple)) and len(hint) == 2:
        library, name = hint
        if library is None or name is None:
            return None
        if not isinstance(library, str) or not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{where} {list(hint)!r}: expected [library, ClassName] strings")
        if library in _OUR_LIBRARY_ALIASES:
            cls = _diffblocks_class(name)
            if cls is None:
                raise ValueError(
                    f"{where} [{library!r}, {name!r}]: diffblocks has no class {name!r}. "
                    f"It may not be implemented yet; pass an object or a spec with a diffblocks class."
                )
            return cls
        if _same_class(declared, library, name):
            return declared
        if library not in TRUSTED_LIBRARIES and not trust_remote_code:
            raise TrustRemoteCodeError(
                f"{where} [{library!r}, {name!r}] names library {library!r}, which is not trusted: importing it "
                f"would run its code. Trusted without asking: {sorted(TRUSTED_LIBRARIES)}. If you trust this "
                f"repo, pass trust_remote_code=True (or add the package to "
                f"diffblocks.components.trust.TRUSTED_LIBRARIES)."
            )
        try:
            module = importlib.import_module(library)
        except ImportError as exc:
            raise ValueError(f"{where} [{library!r}, {name!r}]: cannot import library {library!r}") from exc
        try:
            cls = getattr(module, name)
        except AttributeError:
            raise ValueError(f"{where} [{library!r}, {name!r}]: {library} has no {name!r}") from None
        if not isinstance(cls, type):
            raise ValueError(f"{where} [{library!r}, {name!r}]: {library}.{name} is not a class")
        return cls
    if isinstance(hint, str):
        if "." in hint:
            library, name = hint.rsplit(".", 1)
            return resolve_type_hint([library, name], trust_remote_code, declared, where)
        cls = _diffblocks_class(hint)
        if cls is None:
            raise ValueError(f"{where} {hint!r} does not name a diffblocks class; use 'library.ClassName'")
        return cls
    return hint


def type_hint_to_library(hint: Any) -> tuple[str | None, str | None]:
    """The `[library, ClassName]` pair written to modular_model_index.json."""
    if hint is None:
        return (None, None)
    cls = hint if isinstance(hint, type) else type(hint)
    return (cls.__module__.split(".")[0], cls.__name__)


@dataclass
class ComponentSpec:
    """Names a component (`name`, `type_hint`) and how to obtain it.

    `default_creation_method="from_pretrained"` loads from (`pretrained_model_name_or_path`, `subfolder`,
    `variant`, `revision`); `"from_config"` builds from `config`. `repo` is an alias of
    `pretrained_model_name_or_path`.
    """

    name: str | None = None
    type_hint: Any = None
    description: str | None = None
    config: dict[str, Any] | None = None
    pretrained_model_name_or_path: str | None = None
    subfolder: str | None = ""
    variant: str | None = None
    revision: str | None = None
    default_creation_method: str = "from_pretrained"
    repo: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.repo is not None:
            if self.pretrained_model_name_or_path not in (None, self.repo):
                raise ValueError(
                    f"ComponentSpec {self.name!r}: repo={self.repo!r} and pretrained_model_name_or_path="
                    f"{self.pretrained_model_name_or_path!r} disagree; give one"
                )
            self.pretrained_model_name_or_path = self.repo
            self.repo = None
        if self.default_creation_method not in ("from_pretrained", "from_config"):
            raise ValueError(
                f"ComponentSpec {self.name!r}: default_creation_method must be 'from_pretrained' or 'from_config', "
                f"got {self.default_creation_method!r}"
            )
        self.type_hint = resolve_type_hint(self.type_hint)
        if self.pretrained_model_name_or_path is not None:
            self.pretrained_model_name_or_path = str(self.pretrained_model_name_or_path)
        object.__setattr__(self, "_ready", True)

    # After construction, `spec.repo = "..."` (as in the documentation) edits the loading path.
    def __setattr__(self, key: str, value: Any) -> None:
        if key == "repo" and self.__dict__.get("_ready"):
            object.__setattr__(self, "pretrained_model_name_or_path", None if value is None else str(value))
            return
        object.__setattr__(self, key, value)

    # -- identity -------------------------------------------------------------------------------------
    def __hash__(self) -> int:
        return hash((self.name, self.load_id, self.default_creation_method))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ComponentSpec):
            return NotImplemented
        return (self.name, self.load_id, self.default_creation_method) == (
            other.name, other.load_id, other.default_creation_method)

    def loading_fields(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in LOAD_ID_FIELDS}

    @property
    def load_id(self) -> str:
        """`repo|subfolder|variant|revision` (None written as "null"); "null" for from_config components."""
        if self.default_creation_method == "from_config":
            return "null"
        return "|".join("null" if getattr(self, key) is None else str(getattr(self, key)) for key in LOAD_ID_FIELDS)

    @staticmethod
    def decode_load_id(load_id: str) -> dict[str, Any]:
        parts = load_id.split("|")
        if len(parts) != len(LOAD_ID_FIELDS):
            raise ValueError(f"load_id {load_id!r} must have {len(LOAD_ID_FIELDS)} '|'-separated fields")
        return {key: (None if value == "null" else value) for key, value in zip(LOAD_ID_FIELDS, parts)}

    @classmethod
    def from_component(cls, name: str, component: Any) -> ComponentSpec:
        """Recover the spec of a built component (it remembers the one it was loaded or created with)."""
        remembered = getattr(component, "_diffblocks_spec", None)
        if isinstance(remembered, ComponentSpec):
            spec = copy.deepcopy(remembered)
            spec.name = name
            return spec
        load_id = getattr(component, "_diffblocks_load_id", None)
        if load_id and load_id != "null":
            return cls(name=name, type_hint=type(component), **cls.decode_load_id(load_id))
        import torch

        config = getattr(component, "config", None)
        if not isinstance(component, torch.nn.Module) and hasattr(type(component), "from_config") and config is not None:
            return cls(name=name, type_hint=type(component), config=dict(config), default_creation_method="from_config")
        return cls(name=name, type_hint=type(component))

    # -- building --------------------------------------------------------------------------------------
    def _remember(self, obj: Any, **loading: Any) -> Any:
        spec = copy.deepcopy(self)
        for key, value in loading.items():
            object.__setattr__(spec, key, value)
        try:
            obj._diffblocks_spec = spec
            obj._diffblocks_load_id = spec.load_id
        except (AttributeError, TypeError):
            logger.debug("component %r of type %s cannot carry its spec", self.name, type(obj).__name__)
        return obj

    def create(self, config: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """Build from config (schedulers, guiders, image processors, ...)."""
        if self.type_hint is None:
            raise ValueError(f"ComponentSpec {self.name!r}: cannot create a component without a type_hint")
        config = dict(config if config is not None else (self.config or {}))
        if hasattr(self.type_hint, "from_config"):
            obj = self.type_hint.from_config(config, **kwargs)
        else:
            params = inspect.signature(self.type_hint).parameters
            accepts_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
            merged = {**config, **kwargs}
            obj = self.type_hint(**{k: v for k, v in merged.items() if accepts_any or k in params})
        spec = copy.deepcopy(self)
        spec.default_creation_method = "from_config"
        spec.config = dict(getattr(obj, "config", None) or config) if hasattr(obj, "config") else config
        try:
            obj._diffblocks_spec = spec
            obj._diffblocks_load_id = "null"
        except (AttributeError, TypeError):
            pass
        return obj

    def load(self, **kwargs: Any) -> Any:
        """Load from the pretrained location; kwargs override loading fields or go to `from_pretrained`."""
        loading = self.loading_fields()
        for key in LOAD_ID_FIELDS:
            if key in kwargs:
                loading[key] = kwargs.pop(key)
        if "repo" in kwargs:
            loading["pretrained_model_name_or_path"] = kwargs.pop("repo")
        path = loading["pretrained_model_name_or_path"]
        if path is None:
            raise ValueError(
                f"ComponentSpec {self.name!r} has no pretrained_model_name_or_path; set it (or `repo`) to load, "
                f"or use create() for config components"
            )
        type_hint = self.type_hint or infer_class(path, loading["subfolder"], loading["revision"])
        obj = _load_with(type_hint, str(path), loading, kwargs, self.name)
        return self._remember(obj, type_hint=type_hint, default_creation_method="from_pretrained", **loading)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            if f.name == "repo":
                continue
            value = getattr(self, f.name)
            if f.name == "type_hint" and value is not None:
                shown.append(f"type_hint={value.__module__}.{value.__qualname__}" if isinstance(value, type)
                             else f"type_hint={value!r}")
            elif value not in (None, "") or f.name in ("name", "default_creation_method"):
                shown.append(f"{f.name}={value!r}")
        return f"ComponentSpec({', '.join(shown)})"


def _is_torch_module_class(cls: Any) -> bool:
    import torch

    return isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def _load_with(type_hint: Any, path: str, loading: dict[str, Any], kwargs: dict[str, Any], name: str | None) -> Any:
    if not hasattr(type_hint, "from_pretrained"):
        raise TypeError(f"component {name!r}: {type_hint!r} has no from_pretrained; use create() or pass an object")
    from .hub import check_local_tree

    check_local_tree(path, loading.get("subfolder"))  # other libraries read the folder themselves
    library = type_hint.__module__.split(".")[0]
    call: dict[str, Any] = {}
    if loading.get("subfolder"):
        call["subfolder"] = loading["subfolder"]
    if loading.get("revision") is not None:
        call["revision"] = loading["revision"]
    dtype = as_torch_dtype(kwargs.pop("torch_dtype", kwargs.pop("dtype", None)), f"component {name!r}: torch_dtype")
    is_module = _is_torch_module_class(type_hint)
    if loading.get("variant") is not None and is_module:
        call["variant"] = loading["variant"]
    if dtype is not None and is_module:
        call["dtype" if library == "transformers" else "torch_dtype"] = dtype
    call.update(_placement_kwargs(kwargs, is_module, library))
    call.update(kwargs)
    return type_hint.from_pretrained(path, **call)


_PLACEMENT_KEYS = ("device", "device_map", "max_memory", "low_cpu_mem_usage")


def _placement_kwargs(kwargs: dict[str, Any], is_module: bool, library: str) -> dict[str, Any]:
    """Take device / device_map / max_memory / low_cpu_mem_usage out of `kwargs`, spelled for this loader.

    Components without tensors (tokenizers, schedulers, guiders) ignore them; transformers models take a device
    as `device_map` (and no longer know `low_cpu_mem_usage`, which is always on there).
    """
    given = {key: kwargs.pop(key) for key in _PLACEMENT_KEYS if key in kwargs}
    given = {key: value for key, value in given.items() if value is not None}
    if not is_module or not given:
        return {}
    if library == "transformers":
        if "device" in given:
            if "device_map" in given:
                raise ValueError(f"pass device={given['device']!r} or device_map={given['device_map']!r}, not both.")
            given["device_map"] = given.pop("device")
        given.pop("low_cpu_mem_usage", None)
    return given


_DTYPE_NAMES = {"float16": "float16", "fp16": "float16", "half": "float16", "bfloat16": "bfloat16",
                "bf16": "bfloat16", "float32": "float32", "fp32": "float32", "float": "float32", "float64": "float64",
                "fp64": "float64", "double": "float64"}


def as_torch_dtype(value: Any, where: str = "torch_dtype") -> Any:
    """A torch.dtype from a dtype or its name ("float16", "fp16", "torch.bfloat16", ...); None stays None."""
    import torch

    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        key = value.strip().lower().removeprefix("torch.")
        if key in _DTYPE_NAMES:
            return getattr(torch, _DTYPE_NAMES[key])
    raise TypeError(f"{where}: expected a torch.dtype or one of {sorted(set(_DTYPE_NAMES))} "
                    f"(also 'torch.float16' style), got {value!r}.")


def infer_class(path: str, subfolder: str | None, revision: str | None) -> Any:
    """Guess the class of an untyped spec from the files in its folder (config `_class_name` or architectures)."""
    from .hub import resolve_file

    for filename in ("config.json", "scheduler_config.json", "guider_config.json"):
        found = resolve_file(path, filename, subfolder=subfolder, revision=revision, required=False)
        if found is None:
            continue
        data = json.loads(found.read_text())
        if "_class_name" in data:
            return resolve_type_hint(["diffblocks", data["_class_name"]])
        if data.get("architectures"):
            return resolve_type_hint(["transformers", data["architectures"][0]])
    if resolve_file(path, "tokenizer_config.json", subfolder=subfolder, revision=revision, required=False):
        import transformers

        return transformers.AutoTokenizer
    raise ValueError(
        f"Cannot tell which class to load from {path!r} (subfolder {subfolder!r}): no config naming a class. "
        f"Give the ComponentSpec a type_hint."
    )
