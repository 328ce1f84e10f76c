"""Configurable components: an object's constructor arguments are its config.

Schedulers, guiders, image processors and models all share this: `config` is what the constructor
was called with (defaults filled in), it round-trips through a JSON file in the standard Hub layout,
and `from_config` rebuilds the object, tolerating keys written by another class or a newer version.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from .hub import resolve_file, upload_folder

logger = logging.getLogger(__name__)

__all__ = ["ConfigMixin", "FrozenConfig", "register_to_config"]


class FrozenConfig(dict):
    """A read-only dict whose keys are also attributes (`scheduler.config.num_train_timesteps`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("config is read-only; build a new object with from_config(config, **changes)")

    def _readonly(self, *args, **kwargs):
        raise TypeError("config is read-only; build a new object with from_config(config, **changes)")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _readonly  # type: ignore[assignment]

    def __deepcopy__(self, memo):
        import copy

        return FrozenConfig({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def __reduce__(self):
        return (FrozenConfig, (dict(self),))


def _jsonable(value: Any) -> Any:
    """Config values as JSON: tuples become lists, dtypes and paths become strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    if type(value).__module__ == "torch":  # dtype, device
        return str(value).replace("torch.", "")
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"config value {value!r} of type {type(value).__name__} cannot be written to JSON")


def register_to_config(init):
    """Decorate `__init__` so its (bound, defaulted) arguments become the object's config."""
    signature = inspect.signature(init)
    plain = [
        name
        for name, p in signature.parameters.items()
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    var_kw = next((n for n, p in signature.parameters.items() if p.kind == p.VAR_KEYWORD), None)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = {name: bound.arguments[name] for name in plain}
        if var_kw:
            values.update(bound.arguments.get(var_kw, {}))
        ignored = getattr(type(self), "_config_ignore", ())
        init(self, *args, **kwargs)
        self.register_to_config(**{k: v for k, v in values.items() if k not in ignored})

    wrapper._config_params = tuple(plain)  # type: ignore[attr-defined]
    return wrapper


class ConfigMixin:
    """Config storage, JSON I/O and `from_config` / `from_pretrained` / `push_to_hub`."""

    config_name: str = "config.json"
    _config_ignore: tuple[str, ...] = ()

    # -- the config itself --------------------------------------------------------------------
    def register_to_config(self, **values: Any) -> None:
        current = dict(getattr(self, "_internal_config", {}) or {})
        current.update(values)
        object.__setattr__(self, "_internal_config", FrozenConfig(current))

    @property
    def config(self) -> FrozenConfig:
        return getattr(self, "_internal_config", None) or FrozenConfig()

    @classmethod
    def init_parameter_names(cls) -> tuple[str, ...]:
        params = getattr(cls.__init__, "_config_params", None)
        if params is None:
            params = tuple(n for n in inspect.signature(cls.__init__).parameters if n != "self")
        return params

    @classmethod
    def from_config(cls, config: dict | ConfigMixin | None = None, **overrides: Any):
        """Build from a config dict (or another configured object), with keyword overrides.

        Keys the constructor does not take (written by another class or a newer version) are kept in
        `config` but not passed on, so a scheduler config can seed a different scheduler class.
        """
        if isinstance(config, ConfigMixin):
            config = dict(config.config)
        merged = {k: v for k, v in dict(config or {}).items() if not k.startswith("_")}
        merged.update(overrides)
        accepted = set(cls.init_parameter_names())
        init_kwargs = {k: v for k, v in merged.items() if k in accepted}
        extra = {k: v for k, v in merged.items() if k not in accepted}
        if extra:
            logger.debug("%s.from_config keeps unused config keys %s", cls.__name__, sorted(extra))
        obj = cls(**init_kwargs)
        if extra:
            obj.register_to_config(**extra)
        return obj

    # -- files -----------------------------------------------------------------------------------
    @classmethod
    def load_config(cls, path_or_repo_id: str | os.PathLike, subfolder: str | None = None,
                    revision: str | None = None) -> dict[str, Any]:
        path = resolve_file(path_or_repo_id, cls.config_name, subfolder=subfolder, revision=revision)
        try:
            return json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc

    def to_json_string(self) -> str:
        data = {"_class_name": type(self).__name__, **_jsonable(dict(self.config))}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def save_config(self, save_directory: str | os.PathLike) -> Path:
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.config_name
        path.write_text(self.to_json_string())
        return path

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, subfolder: str | None = None,
                        revision: str | None = None, **overrides: Any):
        """Config-only components (schedulers, guiders): read the JSON and build."""
        return cls.from_config(cls.load_config(path_or_repo_id, subfolder=subfolder, revision=revision), **overrides)

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        self.save_config(save_directory)
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", None) or Path(save_directory).name
            upload_folder(save_directory, repo_id, **kwargs)

    def push_to_hub(self, repo_id: str, subfolder: str | None = None, **kwargs: Any) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return upload_folder(tmp, repo_id, path_in_repo=subfolder, **kwargs)

    def config_repr(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({body})"

    def __repr__(self) -> str:
        return self.config_repr()
