"""ModularPipeline: a block tree plus the components and config it runs on."""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

from ..blocks.base import ModularPipelineBlocks
from ..blocks.loop import LoopSequentialPipelineBlocks
from ..blocks.state import PipelineState, note_missing_field
from ..blocks.trace import Tracer
from ..blocks.validation import check_inputs
from ..components.config import FrozenConfig
from ..components.spec import ComponentSpec
from .adapters import AdaptersMixin
from .call_components import CallComponents
from .lifecycle import ComponentLifecycleMixin, check_output_names
from .steering import SteeringMixin

logger = logging.getLogger(__name__)

__all__ = ["ModularPipeline", "ComponentLoadError"]

# options of ModularPipeline.from_pretrained kept as defaults for load_components
LOAD_DEFAULT_KEYS = ("torch_dtype", "device", "device_map", "max_memory", "low_cpu_mem_usage")


class ComponentLoadError(RuntimeError):
    """One or more components failed to load; the message lists each with its reason."""


def _iter_blocks(block: ModularPipelineBlocks):
    yield block
    for child in block.sub_blocks.values():
        yield from _iter_blocks(child)


def _per_component(value: Any, name: str, component_names: set[str]) -> tuple[bool, Any]:
    """`{"unet": x, "default": y}` style kwargs: (present, value for this component)."""
    if isinstance(value, dict) and value and set(value) <= component_names | {"default"}:
        if name in value:
            return True, value[name]
        if "default" in value:
            return True, value["default"]
        return False, None
    return True, value


class ModularPipeline(ComponentLifecycleMixin, SteeringMixin, AdaptersMixin):
    """Runs a block tree. Components are attributes (`pipe.unet`); config values too (`pipe.config.x`).

    Built by `blocks.init_pipeline(...)` or `ModularPipeline.from_pretrained(...)`; loads no weights until
    `load_components`.
    """

    config_name = "modular_model_index.json"

    def __init__(
        self,
        blocks: ModularPipelineBlocks | None = None,
        pretrained_model_name_or_path: str | os.PathLike | None = None,
        components_manager: Any = None,
        collection: str | None = None,
        index: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        from .serialization import apply_index, read_index

        if index is None and pretrained_model_name_or_path is not None:
            index, _ = read_index(pretrained_model_name_or_path)
        if blocks is None:
            raise ValueError("ModularPipeline needs blocks: use blocks.init_pipeline(...) or ModularPipeline.from_pretrained(...)")
        object.__setattr__(self, "_initialised", False)
        self._blocks = copy.deepcopy(blocks)
        self._pretrained_model_name_or_path = (
            str(pretrained_model_name_or_path) if pretrained_model_name_or_path is not None else None
        )
        self.components_manager = components_manager
        self.collection = collection
        self._progress_bar_config: dict[str, Any] = {}
        io = self._blocks._io()
        self._declared_specs = {spec.name: copy.deepcopy(spec) for spec in io.components}
        self._specs: dict[str, ComponentSpec] = copy.deepcopy(self._declared_specs)
        self._config_specs = {c.name: c for c in io.configs}
        self._config_values: dict[str, Any] = {c.name: c.default for c in io.configs}
        self._components: dict[str, Any] = {}
        if index:
            apply_index(self, index, self._pretrained_model_name_or_path, trust_remote_code)
        for name, spec in self._specs.items():
            if spec.default_creation_method == "from_config" and spec.type_hint is not None:
                self._set_component(name, spec.create())
            else:
                self._set_component(name, None)
        object.__setattr__(self, "_initialised", True)

    # -- construction from the Hub ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        repo_or_dir: str | os.PathLike,
        trust_remote_code: bool = False,
        components_manager: Any = None,
        collection: str | None = None,
        revision: str | None = None,
        **load_defaults: Any,
    ) -> ModularPipeline:
        """A pipeline from a modular repo (modular_model_index.json, optional custom blocks) or a
        standard diffusers-format repo (model_index.json). Loads no weights.

        Loading options given here (`torch_dtype`, `device`, `device_map`, `max_memory`, `low_cpu_mem_usage`)
        become the defaults of this pipeline's `load_components` calls.
        """
        from .serialization import pipeline_from_repo

        unknown = sorted(set(load_defaults) - set(LOAD_DEFAULT_KEYS))
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pretrained got unknown arguments {unknown}; loading options it "
                            f"keeps for load_components: {list(LOAD_DEFAULT_KEYS)}")
        pipe = pipeline_from_repo(cls, repo_or_dir, trust_remote_code=trust_remote_code,
                                  components_manager=components_manager, collection=collection,
                                  revision=revision)
        pipe._load_defaults = {k: v for k, v in load_defaults.items() if v is not None}
        return pipe

    @classmethod
    def from_single_file(
        cls,
        path: str | os.PathLike,
        config: str | os.PathLike | None = None,
        torch_dtype: Any = None,
        components_manager: Any = None,
        collection: str | None = None,
        **kwargs: Any,
    ) -> ModularPipeline:
        """A loaded pipeline from one original-layout (LDM / BFL) `.safetensors` checkpoint.

        The family (SD 1.x/2.x, SDXL base/refiner, inpainting, Flux) is detected from the file's keys and picks the
        preset; components the file lacks come from `config=` (a diffusers-format folder or repo) or are left for
        `update_components` with a warning naming them. kwargs: `prediction_type`, `upcast_attention`, or
        component objects (`controlnet=...`, `scheduler=...`). See docs/loading.md.
        """
        from .single_file import pipeline_from_single_file

        return pipeline_from_single_file(cls, path, config=config, torch_dtype=torch_dtype,
                                         components_manager=components_manager, collection=collection, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False,
                        repo_id: str | None = None, **kwargs: Any) -> None:
        from .serialization import save_pipeline

        save_pipeline(self, save_directory, push_to_hub=push_to_hub, repo_id=repo_id, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, push_to_hub=True, repo_id=repo_id, **kwargs)

    # -- components -------------------------------------------------------------------------------------
    def _set_component(self, name: str, obj: Any) -> None:
        self._components[name] = obj
        object.__setattr__(self, name, obj)
        spec = self._specs.get(name)
        if (obj is not None and self.components_manager is not None and spec is not None
                and spec.default_creation_method == "from_pretrained"):
            self.components_manager.add(name, obj, self.collection)

    @property
    def components(self) -> dict[str, Any]:
        return dict(self._components)

    @property
    def component_names(self) -> list[str]:
        return list(self._specs)

    @property
    def null_component_names(self) -> list[str]:
        return [n for n in self._specs if self._components.get(n) is None]

    @property
    def pretrained_component_names(self) -> list[str]:
        return [n for n, s in self._specs.items() if s.default_creation_method == "from_pretrained"]

    @property
    def config_component_names(self) -> list[str]:
        return [n for n, s in self._specs.items() if s.default_creation_method == "from_config"]

    def get_component_spec(self, name: str) -> ComponentSpec:
        if name not in self._specs:
            raise KeyError(f"{type(self).__name__} has no component {name!r}; components: {self.component_names}")
        return copy.deepcopy(self._specs[name])

    def _reuse_from_manager(self, spec: ComponentSpec) -> Any:
        manager = self.components_manager
        if manager is None or spec.load_id == "null":
            return None
        for obj in getattr(manager, "components", {}).values():
            if getattr(obj, "_diffblocks_load_id", None) == spec.load_id:
                return obj
        return None

    def load_components(self, names: list[str] | str | None = None, **kwargs: Any) -> None:
        """Load `from_pretrained` components (all not-yet-loaded ones with a location by default).

        kwargs go to each loader; a dict such as `torch_dtype={"unet": torch.float16, "default": torch.float32}`
        gives per-component values. A component already held by the components manager under the same
        load_id is reused rather than loaded twice. `device=` / `device_map=` / `max_memory=` /
        `low_cpu_mem_usage=` place model weights as they are read (see `ModelMixin.from_pretrained`);
        components without weights ignore them.
        """
        kwargs = {**self.__dict__.get("_load_defaults", {}), **kwargs}
        if names is None:
            names = [n for n, s in self._specs.items()
                     if s.default_creation_method == "from_pretrained" and s.pretrained_model_name_or_path
                     and self._components.get(n) is None]
        elif isinstance(names, str):
            names = [names]
        unknown = [n for n in names if n not in self._specs]
        if unknown:
            raise ValueError(f"load_components: unknown component(s) {unknown}; components: {self.component_names}")
        known = set(self._specs)
        failures: dict[str, str] = {}
        for name in names:
            spec = self._specs[name]
            call_kwargs = {}
            for key, value in kwargs.items():
                present, item = _per_component(value, name, known)
                if present:
                    call_kwargs[key] = item
            try:
                obj = None if call_kwargs else self._reuse_from_manager(spec)
                if obj is None:
                    obj = spec.load(**call_kwargs) if spec.default_creation_method == "from_pretrained" else spec.create()
            except Exception as exc:  # collected and re-raised together below
                failures[name] = f"{type(exc).__name__}: {exc}"
                continue
            self._set_component(name, obj)
        if failures:
            details = "\n".join(f"  - {n}: {reason}" for n, reason in failures.items())
            raise ComponentLoadError(f"Failed to load {len(failures)} component(s):\n{details}")

    def update_components(self, **components: Any) -> None:
        """Replace components (objects or ComponentSpecs) or config values by name."""
        for name, value in components.items():
            if name in self._specs or isinstance(value, ComponentSpec):
                self._update_component(name, value)
            elif name in self._config_specs:
                self._config_values[name] = value
            else:
                raise ValueError(
                    f"update_components: {name!r} is neither a component nor a config of this pipeline. "
                    f"Components: {self.component_names}; configs: {list(self._config_specs)}"
                )

    def _update_component(self, name: str, value: Any) -> None:
        if isinstance(value, ComponentSpec):
            spec = copy.deepcopy(value)
            spec.name = name
            if spec.default_creation_method == "from_config":
                obj = spec.create()
            elif spec.pretrained_model_name_or_path:
                obj = spec.load()
            else:
                obj = None
        else:
            obj = value
            spec = ComponentSpec.from_component(name, obj) if obj is not None else self._specs.get(name)
        old = self._components.get(name)
        if old is not None and obj is not None and type(old) is not type(obj):
            logger.info("%s: component %r changed type %s -> %s", type(self).__name__, name,
                        type(old).__name__, type(obj).__name__)
        declared = self._declared_specs.get(name)
        if declared is not None and declared.type_hint is not None and obj is not None and not isinstance(obj, declared.type_hint):
            logger.info("%s: component %r is a %s; the blocks declare %s", type(self).__name__, name,
                        type(obj).__name__, declared.type_hint.__name__)
        if spec is not None:
            self._specs[name] = spec
        self._set_component(name, obj)

    def to(self, *args: Any, **kwargs: Any) -> ModularPipeline:
        import torch

        for obj in self._components.values():
            if isinstance(obj, torch.nn.Module):
                obj.to(*args, **kwargs)
        return self

    def enable_model_cpu_offload(self, device: Any = "cuda", memory_reserve_margin: int | str = "3GB",
                                 **kwargs: Any) -> ModularPipeline:
        """Keep models on the CPU and move each to `device` just before it runs (see ComponentsManager).

        Builds a ComponentsManager for this pipeline when it has none; a shared manager offloads across
        every pipeline that uses it.
        """
        if self.components_manager is None:
            from ..components.manager import ComponentsManager

            self.components_manager = ComponentsManager()
            for name, obj in self._components.items():
                if obj is not None and self._specs[name].default_creation_method == "from_pretrained":
                    self.components_manager.add(name, obj, self.collection)
        self.components_manager.enable_auto_cpu_offload(device=device, memory_reserve_margin=memory_reserve_margin,
                                                        **kwargs)
        return self

    @property
    def execution_device(self):
        """Where blocks should create tensors: the offload device when auto offload is on, else `device`."""
        manager = self.components_manager
        offloader = getattr(manager, "auto_offload", None) if manager is not None else None
        if offloader is not None:
            return offloader.device
        return self.device

    def _modules(self):
        import torch

        return [obj for obj in self._components.values() if isinstance(obj, torch.nn.Module)]

    @property
    def device(self):
        import torch

        for module in self._modules():
            for tensor in module.parameters():
                return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self):
        import torch

        for module in self._modules():
            for tensor in module.parameters():
                return tensor.dtype
        return torch.float32

    # -- config, blocks, doc ----------------------------------------------------------------------------------
    @property
    def config(self) -> FrozenConfig:
        from .serialization import index_entry

        data: dict[str, Any] = {
            "_class_name": type(self).__name__,
            "_blocks_class_name": type(self._blocks).__name__,
        }
        data.update(self._config_values)
        for name, spec in self._specs.items():
            if spec.default_creation_method == "from_pretrained":
                data[name] = index_entry(spec, self._components.get(name))
        return FrozenConfig(data)

    @property
    def blocks(self) -> ModularPipelineBlocks:
        """A copy of the blocks; its repr and doc show the component classes this pipeline holds (e.g. the
        scheduler actually loaded) where they differ from what the blocks declare.

        The copy is made once and handed out again until it (or the pipeline's own tree) is edited, so reading
        `pipe.blocks` is cheap; edit it freely: the pipeline is not affected and the next read is a fresh copy."""
        view = self.__dict__.get("_blocks_view")
        source = self._blocks._io()
        if view is None or view[1] is not source or "_io_cache" not in view[0].__dict__:
            blocks = copy.deepcopy(self._blocks)
            blocks._io()  # an edit anywhere in the copy drops this: the next read makes a new copy
            self.__dict__["_blocks_view"] = view = (blocks, source)
        blocks = view[0]
        held = {name: type(obj).__name__ for name, obj in self._components.items() if obj is not None}
        for name, spec in self._specs.items():
            if name not in held and isinstance(spec.type_hint, type):
                held[name] = spec.type_hint.__name__
        for block in _iter_blocks(blocks):
            block.__dict__["_pipeline_component_types"] = held
        return blocks

    @property
    def doc(self) -> str:
        return self._blocks.doc

    @property
    def default_call_parameters(self) -> dict[str, Any]:
        return {p.name: p.default for p in self._blocks._io().inputs if p.name is not None}

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Settings for the tqdm bars of every loop block (e.g. `disable=True`)."""
        self._progress_bar_config = dict(kwargs)
        for block in _iter_blocks(self._blocks):
            if isinstance(block, LoopSequentialPipelineBlocks):
                block.set_progress_bar_config(**kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        config = self.__dict__.get("_config_values", {})
        if name in config:
            return config[name]
        import difflib

        known = [n for n in dir(type(self)) if not n.startswith("_")] + list(self.__dict__.get("_specs", {}))
        close = difflib.get_close_matches(name, known + list(config), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise AttributeError(
            f"{type(self).__name__} has no attribute {name!r}.{hint} Components: "
            f"{list(self.__dict__.get('_specs', {}))}; configs: {list(config)}"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_initialised") and name in self.__dict__.get("_specs", {}):
            self._update_component(name, value)
        else:
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}(blocks={type(self._blocks).__name__})"]
        lines.append("  Components:")
        for name, spec in self._specs.items():
            obj = self._components.get(name)
            if obj is None:
                status = "not loaded"
                where = spec.pretrained_model_name_or_path
                if where:
                    status += f" (from {where}" + (f", subfolder={spec.subfolder}" if spec.subfolder else "") + ")"
            else:
                status = type(obj).__name__ + (" [config]" if spec.default_creation_method == "from_config" else "")
            lines.append(f"    {name}: {status}")
        if self._config_values:
            lines.append("  Configs:")
            lines.extend(f"    {k}: {v!r}" for k, v in self._config_values.items())
        return "\n".join(lines)

    # -- running ------------------------------------------------------------------------------------------------
    def __call__(self, state: PipelineState | None = None, output: str | list[str] | tuple[str, ...] | None = None,
                 trace: bool = False, **kwargs: Any) -> Any:
        """Run the blocks. `output=None` returns the PipelineState, a name returns that value, a list a dict.

        `trace=True` records per-block wall time and peak device memory on `state.trace` (and prints nothing).
        """
        where = f"{type(self).__name__}({type(self._blocks).__name__})"
        values = check_inputs(self._blocks, kwargs, where=where)
        if output is not None and not isinstance(output, (str, list, tuple)):
            raise TypeError(f"output must be None, a name or a list of names; got {type(output).__name__}")
        check_output_names(output, self._output_names(values), where, produced=False)
        self._interrupt = False  # the reference's flag a step callback may set to stop early (runtime/callbacks.py)
        given = state
        state = copy.deepcopy(state) if state is not None else PipelineState()
        table = self._blocks._io().input_table
        for name, value in values.items():
            param = table.get(name)
            if param is None:
                for key, item in value.items():
                    state.set(key, item, name)
            else:
                state.set(name, value, param.kwargs_type)
        import torch

        components = CallComponents(self)  # per-call copies of schedulers and guiders: calls are reentrant
        try:
            with torch.no_grad():
                state = self._run_blocks(state, Tracer() if trace else None, components)  # runtime/steering.py
        except Exception as exc:
            self._annotate(exc)
            if given is not None:
                self._note_given_state(exc, given)
            raise
        finally:
            components.finish_call()
        return self._select_output(state, output)

    def _note_given_state(self, exc: BaseException, given: PipelineState) -> None:
        produced = sorted(set(given.values) & {o.name for o in self._blocks._io().outputs if o.name})
        if produced and hasattr(exc, "add_note"):
            exc.add_note(
                f"(this call got state=... holding values an earlier call produced: {produced}; the blocks read "
                f"them as inputs. Pass a state with only the values to reuse, e.g. "
                f"PipelineState({{'prompt_embeds': old.get('prompt_embeds'), ...}}), or call without state=)"
            )

    def _annotate(self, exc: BaseException) -> None:
        note_missing_field(exc)
        path = getattr(exc, "_diffblocks_path", None)
        if not path or not hasattr(exc, "add_note"):
            return
        block: ModularPipelineBlocks = self._blocks
        for part in path:
            block = block.sub_blocks.get(part, block)
        note = f"(raised in block {'.'.join(path)!r}, {type(block).__name__})"
        missing = [n for n in block.component_names if self._components.get(n) is None]
        if missing:
            note += f"; that block's components not loaded: {missing} (call pipe.load_components({missing}))"
        exc.add_note(note)

    def _output_names(self, values: dict[str, Any]) -> list[str]:
        """Every name a call could return: declared inputs and outputs, plus the keys of input groups given."""
        io = self._blocks._io()
        names = {p.name for p in io.inputs if p.name} | {o.name for o in io.outputs} | set(values)
        for value in values.values():
            if isinstance(value, dict):
                names.update(k for k in value if isinstance(k, str))
        return sorted(names)

    def _select_output(self, state: PipelineState, output: Any) -> Any:
        if output is None:
            return state
        where = f"{type(self).__name__}({type(self._blocks).__name__})"
        check_output_names(output, list(state.values), where, produced=True)
        if isinstance(output, str):
            return state.values[output]
        return {name: state.values[name] for name in output}
