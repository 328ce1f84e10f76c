"""Component lifecycle names of `ModularPipeline` as the Modular Diffusers documentation uses them:
`load_default_components`, `register_components`, `unload_components`; and output-name checking.

A mixin, so `runtime/pipeline.py` keeps the core (init, load, update, call) and these stay in one place.
"""

from __future__ import annotations

import difflib
import gc
import logging
from typing import Any

from ..components.spec import ComponentSpec

logger = logging.getLogger(__name__)

__all__ = ["ComponentLifecycleMixin", "UnknownOutputError", "check_output_names"]


class UnknownOutputError(KeyError):
    """`output=` names a value the pipeline does not (or did not) produce; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0]) if self.args else ""


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_output_names(output: Any, valid: list[str], where: str, produced: bool) -> None:
    """Raise `UnknownOutputError` for names in `output` that are not in `valid`.

    `produced=False`: before the run, `valid` is every name the blocks declare (inputs and outputs);
    `produced=True`: after it, `valid` is what the state holds.
    """
    if output is None:
        return
    names = [output] if isinstance(output, str) else list(output)
    unknown = [n for n in names if n not in valid]
    if not unknown:
        return
    label = "The state holds" if produced else "Valid outputs (the inputs and outputs of its blocks)"
    verb = "was not produced by this call" if produced else "is not produced by any block of this pipeline"
    hints = "; ".join(f"output {n!r} {verb}{_suggest(n, valid)}" for n in unknown)
    raise UnknownOutputError(f"{where}: {hints}. {label}: {sorted(valid)}")


class ComponentLifecycleMixin:
    """Expects `load_components`, `_specs`, `_components`, `_set_component` and `components_manager`."""

    def load_default_components(self, **kwargs: Any) -> None:
        """Load every default component: each `from_pretrained` spec with a location that is not loaded yet.

        Keyword arguments go to the loaders as in `load_components` (e.g. `torch_dtype=torch.float16`, or per
        component `torch_dtype={"unet": torch.float16, "default": torch.float32}`).
        """
        self.load_components(names=None, **kwargs)

    def register_components(self, **components: Any) -> None:
        """Set component objects by name (`None` clears one), keeping each component's spec.

        The object becomes the attribute (`pipe.unet`), is saved in `modular_model_index.json`, and a
        `from_pretrained` component joins the pipeline's ComponentsManager. To swap in a component together
        with its spec (or a `ComponentSpec` to load), use `update_components`.
        """
        name_of = type(self).__name__
        for name, obj in components.items():
            if name not in self._specs:
                raise ValueError(f"{name_of}.register_components: {name!r} is not a component of this pipeline"
                                 f"{_suggest(name, list(self._specs))}; components: {list(self._specs)}")
            if isinstance(obj, ComponentSpec):
                raise TypeError(f"{name_of}.register_components: {name!r} got a ComponentSpec; register takes the "
                                f"component object. Use update_components({name}=spec) to load from a spec.")
            if self._components.get(name) is obj:
                continue
            self._set_component(name, obj)

    def unload_components(self, names: list[str] | str | None = None) -> list[str]:
        """Unload components, freeing their memory; returns the names unloaded.

        Each attribute goes back to `None` and the component leaves the ComponentsManager; the spec stays, so
        `load_components()` loads it again. `names=None` unloads every loaded `from_pretrained` component.
        """
        name_of = type(self).__name__
        if names is None:
            names = [n for n, spec in self._specs.items()
                     if spec.default_creation_method == "from_pretrained" and self._components.get(n) is not None]
        elif isinstance(names, str):
            names = [names]
        elif not isinstance(names, (list, tuple)):
            raise TypeError(f"{name_of}.unload_components: names must be a name, a list of names or None, "
                            f"got {type(names).__name__}.")
        unknown = [n for n in names if n not in self._specs]
        if unknown:
            raise ValueError(f"{name_of}.unload_components: unknown component(s) {unknown}; components: "
                             f"{list(self._specs)}")
        unloaded = []
        manager = self.components_manager
        for name in names:
            component = self._components.get(name)
            if component is None:
                continue
            component_id = f"{name}_{id(component)}"
            self._set_component(name, None)
            if manager is not None and component_id in getattr(manager, "components", {}):
                manager.remove(component_id)
            del component
            unloaded.append(name)
        if unloaded:
            gc.collect()
            _empty_device_cache()
            logger.info("%s: unloaded %s", name_of, unloaded)
        return unloaded


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
