"""Reading and writing modular repos: modular_model_index.json, blocks config with auto_map, remote code.

Local folders never touch the network. Code from a repo runs only with `trust_remote_code=True`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..blocks.base import ModularPipelineBlocks
from ..components.hub import is_local, resolve_file, upload_folder
from ..components.spec import ComponentSpec, resolve_type_hint, type_hint_to_library
from ..components.trust import TrustRemoteCodeError, check_relative

if TYPE_CHECKING:
    from .pipeline import ModularPipeline

logger = logging.getLogger(__name__)

__all__ = [
    "TrustRemoteCodeError", "read_modular_index", "apply_index", "index_entry", "save_pipeline",
    "pipeline_from_repo", "save_blocks", "load_blocks", "blocks_structure", "build_blocks",
]

INDEX_NAME = "modular_model_index.json"
STANDARD_INDEX_NAME = "model_index.json"
BLOCKS_CONFIG_NAMES = ("config.json", "modular_config.json")
_LOADING_KEYS = ("pretrained_model_name_or_path", "subfolder", "variant", "revision")


def _read_json(repo: str | os.PathLike, filename: str, revision: str | None = None) -> dict[str, Any] | None:
    path = resolve_file(repo, filename, revision=revision, required=False)
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{filename} in {repo} is not valid JSON: {exc}") from exc


def read_modular_index(repo: str | os.PathLike, revision: str | None = None) -> dict[str, Any] | None:
    return _read_json(repo, INDEX_NAME, revision)


# -- component entries ------------------------------------------------------------------------------------
def index_entry(spec: ComponentSpec, obj: Any) -> list[Any]:
    """`[library, class, loading spec]`; library and class are null until the component is loaded."""
    library, cls = type_hint_to_library(obj) if obj is not None else (None, None)
    loading = {key: getattr(spec, key) for key in _LOADING_KEYS}
    loading["type_hint"] = list(type_hint_to_library(spec.type_hint)) if spec.type_hint is not None else None
    return [library, cls, loading]


def _spec_from_entry(name: str, entry: Any, repo: str | None, declared: ComponentSpec | None,
                     trust_remote_code: bool = False) -> ComponentSpec:
    if not (isinstance(entry, (list, tuple)) and len(entry) in (2, 3)):
        raise ValueError(f"{INDEX_NAME}: entry {name!r} must be [library, class, spec], got {entry!r}")
    library, cls = entry[0], entry[1]
    loading = dict(entry[2]) if len(entry) == 3 and entry[2] else {}
    if "repo" in loading and not loading.get("pretrained_model_name_or_path"):
        loading["pretrained_model_name_or_path"] = loading.pop("repo")
    loading.pop("repo", None)
    hint_pair = loading.pop("type_hint", None) or ([library, cls] if library and cls else None)
    type_hint = declared.type_hint if declared is not None else None
    if hint_pair:
        try:
            type_hint = resolve_type_hint(hint_pair, trust_remote_code, type_hint, where=f"{INDEX_NAME} entry {name!r}")
        except TrustRemoteCodeError:
            raise
        except ValueError as exc:
            if type_hint is None:
                raise
            _warn_substitute(name, exc, type_hint)
    path = loading.get("pretrained_model_name_or_path")
    subfolder = check_relative(loading.get("subfolder"), "subfolder", f"{INDEX_NAME} entry {name!r}")
    if path is None and repo is not None and is_local(repo) and (Path(repo) / (subfolder or name)).is_dir():
        path, subfolder = repo, subfolder or name
    return ComponentSpec(
        name=name,
        type_hint=type_hint,
        description=declared.description if declared is not None else None,
        pretrained_model_name_or_path=path,
        subfolder=subfolder if subfolder is not None else "",
        variant=loading.get("variant"),
        revision=loading.get("revision"),
        default_creation_method="from_pretrained",
    )


def _warn_substitute(name: str, exc: Exception, substitute: Any) -> None:
    import warnings

    message = (f"component {name!r}: {exc} Using the blocks' declared class {substitute.__name__} INSTEAD; results "
               f"will differ from the repo's. Pass the intended component with update_components({name}=...).")
    logger.warning(message)
    warnings.warn(message, UserWarning, stacklevel=4)


def apply_index(pipe: ModularPipeline, index: dict[str, Any], repo: str | None, trust_remote_code: bool = False) -> None:
    """Override the blocks' specs and configs with a repo's index entries (for names the blocks use)."""
    for name, value in index.items():
        if name.startswith("_"):
            continue
        if name in pipe._specs:
            pipe._specs[name] = _spec_from_entry(name, value, repo, pipe._declared_specs.get(name), trust_remote_code)
        elif name in pipe._config_specs:
            pipe._config_values[name] = value


# -- blocks: structure and classes -------------------------------------------------------------------------
def _is_builtin(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "diffblocks"


def _class_ref(cls: type) -> str:
    if _is_builtin(cls):
        return f"{cls.__module__}.{cls.__qualname__}"
    source = inspect.getsourcefile(cls)
    if source is None:
        raise ValueError(f"cannot save block class {cls.__name__}: its source file is unknown (defined interactively?)")
    return f"{Path(source).stem}.{cls.__qualname__}"


def _default_children(block: ModularPipelineBlocks) -> list[tuple[str, type]] | None:
    names, classes = getattr(type(block), "block_names", None), getattr(type(block), "block_classes", None)
    if names is None or classes is None:
        return None
    return [(n, c if isinstance(c, type) else type(c)) for n, c in zip(names, classes)]


def blocks_structure(block: ModularPipelineBlocks) -> dict[str, Any]:
    """The tree as JSON: class references, plus sub-blocks wherever they differ from the class default."""
    data: dict[str, Any] = {"class": _class_ref(type(block))}
    if block.sub_blocks:
        actual = [(n, type(b)) for n, b in block.sub_blocks.items()]
        children_changed = actual != _default_children(block)
        nested = {n: blocks_structure(b) for n, b in block.sub_blocks.items()}
        if children_changed or any("sub_blocks" in child for child in nested.values()):
            data["sub_blocks"] = nested
            data["sub_block_order"] = list(nested)  # the JSON files are written with sorted keys
            triggers = block.__dict__.get("block_trigger_inputs")
            if triggers is not None:
                data["block_trigger_inputs"] = list(triggers)
        if block.__dict__.get("_description"):
            data["description"] = block.__dict__["_description"]
    return data


def _custom_source_files(block: ModularPipelineBlocks) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for cls in {type(b) for b in _walk(block)}:
        if not _is_builtin(cls):
            source = inspect.getsourcefile(cls)
            if source is None:
                raise ValueError(f"cannot save block class {cls.__name__}: its source file is unknown")
            files[Path(source).name] = Path(source)
    return files


def _walk(block: ModularPipelineBlocks):
    yield block
    for child in block.sub_blocks.values():
        yield from _walk(child)


class _ClassResolver:
    """Turns class references into classes; custom code only from a trusted repo's folder."""

    def __init__(self, repo: str | None, trust_remote_code: bool, revision: str | None = None) -> None:
        self.repo, self.trust, self.revision = repo, trust_remote_code, revision
        self._package: str | None = None

    def __call__(self, ref: str) -> type:
        module_name, _, qualname = ref.rpartition(".")
        if module_name.split(".")[0] == "diffblocks":
            module = importlib.import_module(module_name)
        else:
            module = self._remote_module(module_name)
        obj: Any = module
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                raise ValueError(f"class {qualname!r} not found in module {module_name!r} of {self.repo}")
        return obj

    def _remote_module(self, module_name: str) -> types.ModuleType:
        if not self.trust:
            raise TrustRemoteCodeError(
                f"{self.repo} contains custom block code ({module_name}.py). Loading it runs that code on your "
                f"machine; read it first, then pass trust_remote_code=True to load it."
            )
        if self._package is None:
            folder = self._code_folder()
            digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
            package = f"diffblocks_remote_{digest}"
            if package not in sys.modules:
                module = types.ModuleType(package)
                module.__path__ = [str(folder)]  # type: ignore[attr-defined]
                sys.modules[package] = module
            self._package = package
        return importlib.import_module(f"{self._package}.{module_name}")

    def _code_folder(self) -> Path:
        if self.repo is None:
            raise ValueError("custom blocks need a repo or folder to load their code from")
        if is_local(self.repo):
            return Path(self.repo).expanduser()
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(self.repo), allow_patterns=["*.py", "*.json"], revision=self.revision))


def build_blocks(structure: dict[str, Any], resolve: _ClassResolver) -> ModularPipelineBlocks:
    cls = resolve(structure["class"])
    if not (isinstance(cls, type) and issubclass(cls, ModularPipelineBlocks)):
        raise TypeError(f"{structure['class']} is not a ModularPipelineBlocks class")
    if "sub_blocks" not in structure:
        return cls()
    sub_blocks = structure["sub_blocks"]
    order = structure.get("sub_block_order") or list(sub_blocks)
    if sorted(order) != sorted(sub_blocks):
        raise ValueError(f"blocks structure of {structure['class']}: sub_block_order {order} does not list the "
                         f"sub_blocks {sorted(sub_blocks)}")
    children = {name: build_blocks(sub_blocks[name], resolve) for name in order}
    kwargs: dict[str, Any] = {}
    if "block_trigger_inputs" in structure:
        kwargs["block_trigger_inputs"] = structure["block_trigger_inputs"]
    block = cls.from_blocks_dict(children, structure.get("description"), **kwargs)
    return block


def _find_builtin_class(name: str) -> type | None:
    from ..presets import import_preset_modules

    import_preset_modules()  # defines every preset block class, so a fresh process finds them by name
    stack = [ModularPipelineBlocks]
    while stack:
        cls = stack.pop()
        if cls.__name__ == name and _is_builtin(cls):
            return cls
        stack.extend(cls.__subclasses__())
    return None


def save_blocks(block: ModularPipelineBlocks, save_directory: str | os.PathLike, push_to_hub: bool = False,
                repo_id: str | None = None, **kwargs: Any) -> None:
    """Write the blocks config (`config.json` with `auto_map` for custom code) and copy custom source files."""
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"_class_name": type(block).__name__, "_blocks_structure": blocks_structure(block)}
    if not _is_builtin(type(block)):
        config["auto_map"] = {"ModularPipelineBlocks": _class_ref(type(block))}
    requirements = {k: v for b in _walk(block) for k, v in (b._requirements or {}).items()}
    if requirements:
        config["requirements"] = requirements
    for filename, source in _custom_source_files(block).items():
        target = directory / filename
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if push_to_hub:
        upload_folder(directory, repo_id or directory.name, **kwargs)


def _blocks_config(repo: str | os.PathLike, revision: str | None) -> dict[str, Any] | None:
    for filename in BLOCKS_CONFIG_NAMES:
        data = _read_json(repo, filename, revision)
        if data is not None and ("auto_map" in data or "_blocks_structure" in data):
            return data
    return None


def _blocks_from_repo(repo: str, index: dict[str, Any] | None, trust_remote_code: bool,
                      revision: str | None) -> ModularPipelineBlocks | None:
    resolve = _ClassResolver(repo, trust_remote_code, revision)
    config = _blocks_config(repo, revision)
    if config is not None:
        if "_blocks_structure" in config:
            return build_blocks(config["_blocks_structure"], resolve)
        ref = config["auto_map"].get("ModularPipelineBlocks")
        if ref is None:
            raise ValueError(f"{repo}: auto_map has no 'ModularPipelineBlocks' entry: {config['auto_map']}")
        return build_blocks({"class": ref}, resolve)
    if index is not None:
        if "_blocks_structure" in index:
            return build_blocks(index["_blocks_structure"], resolve)
        name = index.get("_blocks_class_name")
        if name:
            cls = _find_builtin_class(name)
            if cls is None:
                raise ValueError(f"{repo}: blocks class {name!r} is not a diffblocks class and the repo ships no code for it")
            return cls()
    return None


def load_blocks(repo_or_dir: str | os.PathLike, trust_remote_code: bool = False,
                expected_class: type | None = None, revision: str | None = None, **_: Any) -> ModularPipelineBlocks:
    repo = str(repo_or_dir)
    blocks = _blocks_from_repo(repo, read_modular_index(repo, revision), trust_remote_code, revision)
    if blocks is None:
        raise OSError(f"{repo} has no blocks config (config.json with auto_map or _blocks_structure) or {INDEX_NAME}")
    if expected_class is not None and not isinstance(blocks, expected_class):
        raise TypeError(f"{repo} holds {type(blocks).__name__}, not a {expected_class.__name__}")
    return blocks


# -- pipelines -------------------------------------------------------------------------------------------------
def standard_index(repo: str, standard: dict[str, Any]) -> dict[str, Any]:
    """A standard repo's model_index.json as modular index entries pointing at its subfolders."""
    index: dict[str, Any] = {
        name: [value[0], value[1], {"pretrained_model_name_or_path": repo, "subfolder": name,
                                    "type_hint": [value[0], value[1]]}]
        for name, value in standard.items()
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0]
    }
    index.update({k: v for k, v in standard.items() if not k.startswith("_") and not isinstance(v, list)})
    return index


def read_index(repo: str | os.PathLike, revision: str | None = None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(modular index, raw standard model_index.json): the modular one when the repo has it."""
    index = read_modular_index(repo, revision)
    if index is not None:
        return index, None
    standard = _read_json(repo, STANDARD_INDEX_NAME, revision)
    if standard is None:
        return None, None
    return standard_index(str(repo), standard), standard


def pipeline_from_repo(cls: type[ModularPipeline], repo_or_dir: str | os.PathLike, trust_remote_code: bool,
                       components_manager: Any, collection: str | None, revision: str | None) -> ModularPipeline:
    repo = str(repo_or_dir)
    index, standard = read_index(repo, revision)
    if index is None:
        raise OSError(f"{repo} has neither {INDEX_NAME} nor {STANDARD_INDEX_NAME}")
    if standard is not None:
        from ..presets import blocks_for_standard_pipeline

        blocks = blocks_for_standard_pipeline(standard.get("_class_name"), standard)
    else:
        blocks = _blocks_from_repo(repo, index, trust_remote_code, revision)
        if blocks is None:
            raise OSError(f"{repo}: {INDEX_NAME} names no blocks (_blocks_class_name) and no blocks config exists")
    return cls(blocks, repo, components_manager=components_manager, collection=collection, index=index,
               trust_remote_code=trust_remote_code)


def _save_component(obj: Any, target: Path, name: str, kwargs: dict[str, Any]) -> None:
    save = getattr(obj, "save_pretrained", None)
    if save is None:
        raise TypeError(f"component {name!r} ({type(obj).__name__}) has no save_pretrained; it cannot be saved")
    params = inspect.signature(save).parameters
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    save(str(target), **{k: v for k, v in kwargs.items() if v is not None and (accepts_any or k in params)})


def save_pipeline(pipe: ModularPipeline, save_directory: str | os.PathLike, push_to_hub: bool = False,
                  repo_id: str | None = None, variant: str | None = None, max_shard_size: Any = None,
                  **hub_kwargs: Any) -> None:
    """Write every loaded pretrained component (and customised config components) plus the index."""
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    location = repo_id if push_to_hub else str(directory)
    if push_to_hub and not repo_id:
        location = repo_id = directory.name
    index: dict[str, Any] = {
        "_class_name": type(pipe).__name__,
        "_blocks_class_name": type(pipe._blocks).__name__,
        "_diffblocks_version": _version(),
    }
    structure = blocks_structure(pipe._blocks)
    if "sub_blocks" in structure or not _is_builtin(type(pipe._blocks)):
        index["_blocks_structure"] = structure
    index.update(pipe._config_values)
    for name, spec in pipe._specs.items():
        obj = pipe._components.get(name)
        customised_config = (
            spec.default_creation_method == "from_config" and obj is not None and hasattr(obj, "save_pretrained")
            and _differs_from_default(pipe, name, obj)
        )
        if spec.default_creation_method == "from_pretrained" or customised_config:
            if obj is not None:
                _save_component(obj, directory / name, name, {"variant": variant, "max_shard_size": max_shard_size})
                saved = ComponentSpec(name=name, type_hint=spec.type_hint if not customised_config else type(obj),
                                      pretrained_model_name_or_path=location, subfolder=name,
                                      variant=variant if _is_module(obj) else None)
                index[name] = index_entry(saved, obj)
            else:
                index[name] = index_entry(spec, None)
    (directory / INDEX_NAME).write_text(json.dumps(_jsonable(index), indent=2, sort_keys=True) + "\n")
    if not _is_builtin(type(pipe._blocks)) or any(not _is_builtin(type(b)) for b in _walk(pipe._blocks)):
        save_blocks(pipe._blocks, directory)
    if push_to_hub:
        upload_folder(directory, repo_id, **hub_kwargs)


def _is_module(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def _differs_from_default(pipe: ModularPipeline, name: str, obj: Any) -> bool:
    declared = pipe._declared_specs.get(name)
    if declared is None or declared.type_hint is None or type(obj) is not declared.type_hint:
        return True
    try:
        default = declared.create()
    except Exception:  # a default that cannot be built is not comparable
        return True
    return dict(getattr(default, "config", {})) != dict(getattr(obj, "config", {}))


def _jsonable(value: Any) -> Any:
    from ..components.config import _jsonable as config_jsonable

    return config_jsonable(value)


def _version() -> str:
    import diffblocks

    return diffblocks.__version__
