"""A registry of loaded components shared by pipelines.

Pipelines register what they load here, so several pipelines can find and reuse one model instead of
loading it twice; collections group the components of one pipeline (or one node of a UI) so a reload
under the same name replaces the old model. The same registry is where automatic CPU offload lives
(see `offload.py`), because only the registry sees every model that competes for the device.
"""

from __future__ import annotations

import gc
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .offload import AutoOffloader, format_size, module_memory_bytes, module_residency

logger = logging.getLogger(__name__)

__all__ = ["ComponentsManager"]

LOAD_ID_ATTR = "_diffblocks_load_id"


def get_load_id(component: Any) -> str | None:
    """The checkpoint identity ("repo|subfolder|variant|revision") a ComponentSpec stamped on an object."""
    return getattr(component, LOAD_ID_ATTR, None)


def _module_dtype(module: torch.nn.Module) -> str:
    dtypes = {str(t.dtype).replace("torch.", "") for t in module.parameters()}
    if not dtypes:
        dtypes = {str(t.dtype).replace("torch.", "") for t in module.buffers()}
    if not dtypes:
        return "N/A"
    return dtypes.pop() if len(dtypes) == 1 else "mixed(" + ",".join(sorted(dtypes)) + ")"


def _module_device(module: torch.nn.Module) -> str:
    residency = module_residency(module)
    if not residency:
        return "N/A"
    if len(residency) == 1:
        return next(iter(residency))
    # partly offloaded: list every device with its share, largest first
    parts = sorted(residency.items(), key=lambda kv: -kv[1])
    return "+".join(f"{dev}:{format_size(n)}" for dev, n in parts)


class _Pattern:
    """A name pattern: `name`, `prefix*`, `*contains*`, `*suffix`, `a|b` (any of), `!pattern` (negation).

    A single plain name that matches no component exactly falls back to a substring match, as the
    reference implementation does, so `get_one(name="encoder_2")` finds `text_encoder_2`.
    """

    def __init__(self, pattern: str):
        if not isinstance(pattern, str) or not pattern.strip("!"):
            raise ValueError(f"a component name pattern must be a non-empty string, got {pattern!r}")
        self.text = pattern
        self.negated = pattern.startswith("!")
        body = pattern[1:] if self.negated else pattern
        self.terms = [t.strip() for t in body.split("|")]
        if any(not t for t in self.terms):
            raise ValueError(f"component name pattern {pattern!r} has an empty alternative around '|'")

    @staticmethod
    def _term_regex(term: str) -> re.Pattern[str]:
        return re.compile("^" + ".*".join(re.escape(part) for part in term.split("*")) + "$")

    def select(self, names: dict[str, str]) -> list[str]:
        """Ids (keys of `names`, id -> base name) whose base name matches, in registry order."""
        if len(self.terms) == 1 and "*" not in self.terms[0]:
            term = self.terms[0]
            exact = {cid for cid, n in names.items() if n == term}
            hits = exact or {cid for cid, n in names.items() if term in n}
        else:
            regexes = [self._term_regex(t) for t in self.terms]
            hits = {cid for cid, n in names.items() if any(r.match(n) for r in regexes)}
        return [cid for cid in names if (cid in hits) != self.negated]


class ComponentsManager:
    """Registry of components (models and anything else) shared by pipelines.

    Each entry has an id `f"{name}_{id(obj)}"`, belongs to zero or more collections, and may carry a
    load id (the checkpoint it came from) used to warn about the same checkpoint loaded twice.
    """

    _available_info_fields = (
        "model_id",
        "name",
        "added_time",
        "collection",
        "class_name",
        "load_id",
        "size_gb",
        "size_bytes",
        "device",
        "residency",
        "dtype",
        "adapters",
        "has_hook",
        "execution_device",
        "resident",
        "quantization",
    )

    def __init__(self) -> None:
        self.components: OrderedDict[str, Any] = OrderedDict()
        self.added_time: OrderedDict[str, float] = OrderedDict()
        self.collections: OrderedDict[str, list[str]] = OrderedDict()
        self._names: dict[str, str] = {}
        # set while auto CPU offload is on (an `offload.AutoOffloader`); add/remove keep it in sync
        self._offloader: AutoOffloader | None = None

    # ------------------------------------------------------------------ registry
    def add(self, name: str, component: Any, collection: str | None = None) -> str:
        """Register `component` under `name` (optionally in `collection`) and return its id.

        In a collection, a component already registered there under the same name is replaced: it
        leaves the collection, and the manager too unless another collection still holds it.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"component name must be a non-empty string, got {name!r}")
        if collection is not None and (not isinstance(collection, str) or not collection):
            raise ValueError(f"collection must be a non-empty string or None, got {collection!r}")
        if component is None:
            raise ValueError(f"ComponentsManager.add({name!r}, None): there is no component to register; load it "
                             f"first (or use remove() to drop a registered one).")

        component_id = f"{name}_{id(component)}"
        is_new = component_id not in self.components
        if is_new:
            for other_id, other in self.components.items():
                if other is component:
                    logger.warning(
                        "ComponentsManager: adding component '%s' as '%s', but the same object is already "
                        "registered as '%s'. To remove a duplicate, call `components_manager.remove('<component_id>')`.",
                        name,
                        component_id,
                        other_id,
                    )
                    break
        else:
            logger.info("ComponentsManager: component '%s' is already registered as '%s'", name, component_id)

        if collection is not None:
            members = self.collections.setdefault(collection, [])
            for old_id in [cid for cid in members if self._names[cid] == name and cid != component_id]:
                logger.warning(
                    "ComponentsManager: replacing '%s' in collection '%s': '%s' is replaced by '%s'",
                    name,
                    collection,
                    old_id,
                    component_id,
                )
                self.remove_from_collection(old_id, collection)

        load_id = get_load_id(component)
        if is_new and load_id is not None and load_id != "null":
            same = [
                cid
                for cid, obj in self.components.items()
                if get_load_id(obj) == load_id and obj is not component
            ]
            if same:
                logger.warning(
                    "ComponentsManager: adding component '%s', but it has duplicate load_id '%s' with existing "
                    "components: %s. To remove a duplicate, call `components_manager.remove('<component_id>')`.",
                    component_id,
                    load_id,
                    ", ".join(same),
                )

        if is_new:
            self.components[component_id] = component
            self.added_time[component_id] = time.time()
            self._names[component_id] = name
        if collection is not None and component_id not in self.collections[collection]:
            self.collections[collection].append(component_id)
        logger.info(
            "ComponentsManager: added '%s' as '%s'%s",
            name,
            component_id,
            f" in collection '{collection}'" if collection else "",
        )

        if is_new and self._offloader is not None and isinstance(component, torch.nn.Module):
            self._offloader.attach(component_id, component, name)
        return component_id

    def remove(self, component_id: str) -> None:
        """Unregister a component; a model no other entry shares is moved back to the CPU."""
        self._require_id(component_id)
        component = self.components.pop(component_id)
        self.added_time.pop(component_id)
        self._names.pop(component_id)
        for members in self.collections.values():
            if component_id in members:
                members.remove(component_id)
        if self._offloader is not None:
            self._offloader.detach(component_id)
        if isinstance(component, torch.nn.Module) and not any(o is component for o in self.components.values()):
            on_accelerator = any(dev != "cpu" and dev != "meta" for dev in module_residency(component))
            if on_accelerator:
                component.to("cpu")
                del component
                gc.collect()
                _empty_device_cache()
        logger.info("ComponentsManager: removed '%s'", component_id)

    def remove_from_collection(self, component_id: str, collection: str) -> None:
        """Take a component out of one collection; it leaves the manager when no collection holds it."""
        if collection not in self.collections:
            raise KeyError(
                f"collection {collection!r} does not exist in this ComponentsManager; "
                f"collections: {list(self.collections) or 'none'}"
            )
        members = self.collections[collection]
        if component_id not in members:
            raise KeyError(
                f"component {component_id!r} is not in collection {collection!r}; it holds: {members or 'nothing'}"
            )
        members.remove(component_id)
        if not any(component_id in m for m in self.collections.values()):
            self.remove(component_id)

    # ------------------------------------------------------------------ lookup
    def _require_id(self, component_id: str) -> None:
        if component_id not in self.components:
            raise KeyError(
                f"component id {component_id!r} is not registered in this ComponentsManager; "
                f"registered ids: {list(self.components) or 'none'}"
            )

    def _collections_of(self, component_id: str) -> list[str]:
        return [c for c, members in self.collections.items() if component_id in members]

    def _describe_contents(self) -> str:
        if not self.components:
            return "the manager is empty"
        rows = []
        for cid in self.components:
            colls = self._collections_of(cid)
            rows.append(f"{self._names[cid]!r} ({cid}" + (f", collection {', '.join(colls)}" if colls else "") + ")")
        return "registered: " + "; ".join(rows)

    def _filter_ids(self, collection: str | None, load_id: str | None) -> list[str]:
        ids = list(self.components)
        if collection is not None:
            members = self.collections.get(collection, [])
            ids = [cid for cid in ids if cid in members]
        if load_id is not None:
            ids = [cid for cid in ids if get_load_id(self.components[cid]) == load_id]
        return ids

    def _search_ids(self, names: str | None, collection: str | None, load_id: str | None) -> list[str]:
        ids = self._filter_ids(collection, load_id)
        if names is None:
            return ids
        if not isinstance(names, str):
            raise TypeError(f"names must be a pattern string such as 'unet|vae', got {type(names).__name__}")
        return _Pattern(names).select({cid: self._names[cid] for cid in ids})

    def _by_name(self, ids: Iterable[str], what: str) -> dict[str, Any]:
        result: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for cid in ids:
            name = self._names[cid]
            if name in result:
                raise ValueError(
                    f"{what} gives more than one component named {name!r} ({owner[name]} and {cid}); "
                    "narrow it with `collection=` or use return_dict_with_names=False to key the result by id"
                )
            result[name] = self.components[cid]
            owner[name] = cid
        return result

    def search_components(
        self,
        names: str | None = None,
        collection: str | None = None,
        load_id: str | None = None,
        return_dict_with_names: bool = True,
    ) -> dict[str, Any]:
        """Components whose base name matches a pattern (see `get_one`), optionally filtered.

        Returns {name: component} (an error if two share a name) or {id: component}. An empty
        result is an empty dict.
        """
        ids = self._search_ids(names, collection, load_id)
        if not return_dict_with_names:
            return {cid: self.components[cid] for cid in ids}
        return self._by_name(ids, f"search_components(names={names!r}, collection={collection!r})")

    def get_one(
        self,
        name: str | None = None,
        collection: str | None = None,
        load_id: str | None = None,
        component_id: str | None = None,
    ) -> Any:
        """Exactly one component, by id or by name pattern plus optional collection / load_id filters.

        Patterns: `unet` (exact), `unet*` (prefix), `*unet*` (contains), `!unet` (all but),
        `unet|vae` (either). No match or several matches is an error listing what is registered.
        """
        if component_id is not None:
            if name is not None or collection is not None or load_id is not None:
                raise ValueError("get_one: pass either component_id or name/collection/load_id, not both")
            self._require_id(component_id)
            return self.components[component_id]
        if name is not None and name in self.components and collection is None and load_id is None:
            return self.components[name]  # a component id given positionally, as the reference allows
        ids = self._search_ids(name, collection, load_id)
        query = f"name={name!r}" + (f", collection={collection!r}" if collection is not None else "")
        query += f", load_id={load_id!r}" if load_id is not None else ""
        if not ids:
            hint = ""
            if collection is not None and collection not in self.collections:
                hint = f" Collection {collection!r} does not exist (collections: {list(self.collections) or 'none'})."
            raise ValueError(f"get_one({query}): no component matches.{hint} {self._describe_contents()}")
        if len(ids) > 1:
            raise ValueError(
                f"get_one({query}): {len(ids)} components match: {ids}. Narrow the pattern or pass "
                f"collection=/load_id=. {self._describe_contents()}"
            )
        return self.components[ids[0]]

    def get_ids(self, names: str | list[str] | None = None, collection: str | None = None) -> list[str]:
        """Ids of the components with these exact names (all when None), in registration order."""
        ids = self._filter_ids(collection, None)
        if names is None:
            return ids
        wanted = {names} if isinstance(names, str) else set(names)
        return [cid for cid in ids if self._names[cid] in wanted]

    def get_components_by_ids(self, ids: list[str], return_dict_with_names: bool = True) -> dict[str, Any]:
        for cid in ids:
            self._require_id(cid)
        if not return_dict_with_names:
            return {cid: self.components[cid] for cid in ids}
        return self._by_name(ids, f"get_components_by_ids({list(ids)!r})")

    def get_components_by_names(self, names: list[str], collection: str | None = None) -> dict[str, Any]:
        """{name: component} for the names that are registered (missing names are simply absent).

        The result can be passed straight to `pipeline.update_components(**result)`.
        """
        if isinstance(names, str):
            names = [names]
        return self._by_name(
            self.get_ids(names, collection), f"get_components_by_names({list(names)!r}, collection={collection!r})"
        )

    def get_name(self, component_id: str) -> str:
        """The base name a component was registered under."""
        self._require_id(component_id)
        return self._names[component_id]

    # ------------------------------------------------------------------ info
    def get_model_info(self, component_id: str, fields: str | list[str] | None = None) -> dict[str, Any]:
        """Metadata of one component: class, load id, collections, and for models size, device, dtype."""
        self._require_id(component_id)
        if isinstance(fields, str):
            fields = [fields]
        if fields is not None:
            unknown = [f for f in fields if f not in self._available_info_fields]
            if unknown:
                raise ValueError(
                    f"get_model_info: unknown field(s) {unknown}; available: {list(self._available_info_fields)}"
                )
        component = self.components[component_id]
        info: dict[str, Any] = {
            "model_id": component_id,
            "name": self._names[component_id],
            "added_time": self.added_time[component_id],
            "collection": ", ".join(self._collections_of(component_id)) or None,
            "class_name": type(component).__name__,
            "load_id": get_load_id(component),
        }
        if isinstance(component, torch.nn.Module):
            size = module_memory_bytes(component)
            offloader = self._offloader
            hooked = offloader is not None and offloader.is_attached(component_id)
            peft_config = getattr(component, "peft_config", None)
            quantizer = getattr(component, "hf_quantizer", None)
            info.update(
                {
                    "size_bytes": size,
                    "size_gb": size / 1024**3,
                    "device": _module_device(component),
                    "residency": module_residency(component),
                    "dtype": _module_dtype(component),
                    "adapters": list(peft_config) if isinstance(peft_config, dict) else None,
                    "has_hook": hooked,
                    "execution_device": str(offloader.device) if hooked else None,
                    # placement by the offloader's bookkeeping: True on the execution device, False offloaded
                    "resident": offloader.is_resident(component_id) if hooked else None,
                    "quantization": getattr(quantizer, "quantization_config", None) if quantizer else None,
                }
            )
        if fields is not None:
            return {k: info.get(k) for k in fields}
        return info

    def __len__(self) -> int:
        return len(self.components)

    def __contains__(self, component_id: object) -> bool:
        return component_id in self.components

    def __repr__(self) -> str:
        if not self.components:
            return "ComponentsManager: no components registered."
        models = [cid for cid, c in self.components.items() if isinstance(c, torch.nn.Module)]
        others = [cid for cid in self.components if cid not in models]
        lines = []
        if self._offloader is not None:
            lines.append(f"ComponentsManager (auto CPU offload to {self._offloader.describe()})")
        else:
            lines.append("ComponentsManager")

        def table(header: list[str], rows: list[list[str]]) -> list[str]:
            widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
            fmt = " | ".join(f"{{:<{w}}}" for w in widths)
            rule = "-" * (sum(widths) + 3 * (len(widths) - 1))
            return [rule, fmt.format(*header).rstrip(), rule, *(fmt.format(*r).rstrip() for r in rows), rule]

        if models:
            rows = []
            for cid in models:
                info = self.get_model_info(cid)
                device = info["device"]
                if info["has_hook"]:
                    where = "resident" if info["resident"] else "offloaded"
                    device += f" ({where}, exec {info['execution_device']})"
                rows.append(
                    [
                        cid,
                        info["class_name"],
                        device,
                        info["dtype"],
                        format_size(info["size_bytes"]),
                        info["load_id"] or "N/A",
                        info["collection"] or "N/A",
                        ", ".join(info["adapters"]) if info["adapters"] else "",
                    ]
                )
            lines.append("Models:")
            lines += table(["Id", "Class", "Device", "Dtype", "Size", "Load ID", "Collection", "Adapters"], rows)
        if others:
            rows = [
                [cid, type(self.components[cid]).__name__, ", ".join(self._collections_of(cid)) or "N/A"]
                for cid in others
            ]
            lines.append("Other components:")
            lines += table(["Id", "Class", "Collection"], rows)
        return "\n".join(lines)

    # ------------------------------------------------------------------ offload
    def enable_auto_cpu_offload(
        self,
        device: str | int | torch.device | None = "cuda",
        memory_reserve_margin: int | str = "3GB",
        offload_policy: Callable[..., Any] | None = None,
        memory_info: Callable[[torch.device], tuple[int, int]] | None = None,
        max_memory: int | str | None = None,
        partial: dict[str, int | str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Keep every model on the CPU and move each to `device` just before it runs.

        When free device memory minus `memory_reserve_margin` cannot hold the incoming model, resident
        models are moved back to the CPU, chosen by `offload_policy` (default: least recently used
        first, see `offload.lru_size_aware_policy`; any callable `(candidates, need_bytes) -> evict`).
        `memory_info(device) -> (free, total)` replaces the torch query; `max_memory` caps the bytes of
        models placed on the device; `partial={"unet": "2GB"}` streams the largest submodules of that
        component so at most that much of it stays resident. Models added later are managed too.
        Other keyword arguments (`offload_device`, `methods`) go to `offload.AutoOffloader`.
        """
        if self._offloader is not None:
            self.disable_auto_cpu_offload()
        offloader = AutoOffloader(
            device=device,
            memory_reserve_margin=memory_reserve_margin,
            policy=offload_policy,
            memory_info=memory_info,
            max_memory=max_memory,
            partial=partial,
            **kwargs,
        )
        for cid, component in self.components.items():
            if isinstance(component, torch.nn.Module):
                offloader.attach(cid, component, self._names[cid])
        self._offloader = offloader

    def disable_auto_cpu_offload(self) -> None:
        """Remove the offload hooks and move every managed model back to the CPU."""
        if self._offloader is None:
            return
        self._offloader.close()
        self._offloader = None

    def set_offload_policy(self, policy: Callable[..., Any]) -> None:
        """Swap the eviction policy while auto offload is on."""
        if self._offloader is None:
            raise RuntimeError("auto CPU offload is not enabled; call enable_auto_cpu_offload() first")
        self._offloader.policy = policy

    @property
    def auto_offload(self) -> AutoOffloader | None:
        """The active `AutoOffloader` (its residency table and event log), or None."""
        return self._offloader


def _empty_device_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
