"""`PromptEngine`: ComfyUI-style validation and execution of API-format prompts on our nodes.

    engine = PromptEngine(models_dir="models", input_dir="input", output_dir="output")
    result = engine.validate(prompt)            # ComfyUI's error / node_errors format
    if result.ok:
        ui = engine.execute("id-1", prompt, result.outputs, ExecutionHooks(on_progress=print))

Execution runs the nodes the requested outputs need, in dependency order. A node whose input signature (see
node_cache.py) is unchanged since an earlier prompt is served from the cache and reported through `on_cached`;
the rest run and report `on_executing` / `on_progress` (per denoise step) / `on_preview` / `on_executed`. An
exception in a node becomes a `NodeExecutionError` naming it; `interrupt()` (any thread) makes the running
`execute` raise `diffblocks.Interrupted` within one denoise step. Either way the engine stays usable: the next
`execute` runs normally and keeps every output cached so far. Models are loaded through one shared
ComponentsManager (auto CPU offload to the GPU when one is present).
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..runtime.execution import Interrupted
from .context import NodeContext, PipelineCache
from .node_cache import NodeOutputCache, signature
from .nodes.base import NodeOutput, ServerPaths
from .nodes.registry import NodeRegistry
from .validation import ValidationResult, is_link, validate_prompt

if TYPE_CHECKING:
    import PIL.Image

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_CACHE_MEMORY", "ExecutionHooks", "NodeExecutionError", "PromptEngine", "ValidationResult"]

DEFAULT_CACHE_MEMORY = "4GB"


@dataclass
class ExecutionHooks:
    """Callbacks from the executing thread; every one optional."""

    on_cached: Callable[[list[str]], None] | None = None
    on_executing: Callable[[str | None], None] | None = None
    on_progress: Callable[[str, int, int], None] | None = None
    on_preview: Callable[[str, PIL.Image.Image], None] | None = None
    on_executed: Callable[[str, dict], None] | None = None


class NodeExecutionError(Exception):
    """A node raised while running; carries what ComfyUI's `execution_error` event reports."""

    def __init__(self, node_id: str, class_type: str, exception_message: str, exception_type: str,
                 traceback: list[str], current_inputs: dict[str, Any], executed: list[str] | None = None) -> None:
        super().__init__(f"node {node_id} ({class_type}) failed: {exception_type}: {exception_message}")
        self.node_id = node_id
        self.class_type = class_type
        self.exception_message = exception_message
        self.exception_type = exception_type
        self.traceback = traceback
        self.current_inputs = current_inputs
        self.executed = list(executed or [])


def _format_input(value: Any) -> list[str]:
    if value is None or isinstance(value, (int, float, bool, str)):
        return [value]  # type: ignore[list-item]
    return [f"{type(value).__name__}"]


def _full_type_name(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class PromptEngine:
    def __init__(self, *, models_dir: str | os.PathLike, input_dir: str | os.PathLike,
                 output_dir: str | os.PathLike, temp_dir: str | os.PathLike | None = None,
                 cache_memory: int | str | None = None, registry: NodeRegistry | None = None,
                 components_manager: Any = None) -> None:
        from ..components.manager import ComponentsManager
        from ..components.offload import parse_size

        self.paths = ServerPaths.of(models_dir, input_dir, output_dir, temp_dir)
        self.registry = registry if registry is not None else NodeRegistry()
        self.registry.bind_paths(self.paths)
        if components_manager is None:
            components_manager = ComponentsManager()
            import torch

            if torch.cuda.is_available():
                components_manager.enable_auto_cpu_offload(device="cuda")
        self.components_manager = components_manager
        self.cache = NodeOutputCache(parse_size(DEFAULT_CACHE_MEMORY if cache_memory is None else cache_memory))
        self._stop = threading.Event()  # this engine's interrupt request
        self._pipe_event = threading.Event()  # the interrupt_event of the pipelines nodes run
        self._pipelines = PipelineCache(self._pipe_event)
        self._run_lock = threading.Lock()

    # -- validation ---------------------------------------------------------------------------------------
    def validate(self, prompt: dict) -> ValidationResult:
        return validate_prompt(prompt, self.registry, self.paths)

    # -- interrupt ----------------------------------------------------------------------------------------
    def free(self, unload_models: bool = False, free_memory: bool = False) -> dict[str, int]:
        """Release memory between prompts (ComfyUI's `/free`). `free_memory`: drop every cached node output and
        pipeline; `unload_models`: that, and unregister every loaded component from the ComponentsManager so the
        models can be collected (checkpoints load again when a prompt needs them). Returns what was dropped."""
        dropped = {"node_outputs": 0, "components": 0}
        if not (unload_models or free_memory):
            return dropped
        dropped["node_outputs"] = len(self.cache)
        self.cache.clear()
        self._pipelines.clear()
        if unload_models:
            manager = self.components_manager
            for component_id in list(manager.components):
                manager.remove(component_id)
                dropped["components"] += 1
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.info("freed %(node_outputs)d cached node outputs and %(components)d loaded components", dropped)
        return dropped

    def interrupt(self) -> None:
        """Stop the running `execute` (thread-safe): it raises `diffblocks.Interrupted` before its next node or
        denoise step. An interrupt while nothing runs is forgotten when the next `execute` starts."""
        self._stop.set()
        self._pipe_event.set()

    # -- execution ----------------------------------------------------------------------------------------
    def execute(self, prompt_id: str, prompt: dict, outputs: list[str], hooks: ExecutionHooks | None = None,
                extra_data: dict[str, Any] | None = None) -> dict[str, dict]:
        """Run the nodes `outputs` need; returns node_id -> ui output of the output nodes that have one.

        Validate first (`validate(prompt).outputs` are the outputs to pass)."""
        hooks = hooks if hooks is not None else ExecutionHooks()
        prompt = {str(k): v for k, v in prompt.items()}
        with self._run_lock:
            self._stop.clear()
            self._pipe_event.clear()
            order = self._order(prompt, [str(o) for o in outputs])
            signatures = self._signatures(prompt, order)
            held = {node_id: self.cache.get(signatures[node_id]) for node_id in order}
            cached = [node_id for node_id in order if held[node_id] is not None]
            if hooks.on_cached is not None:
                hooks.on_cached(cached)
            results: dict[str, tuple] = {}
            ui_outputs: dict[str, dict] = {}
            executed: list[str] = list(cached)  # ComfyUI's "executed": cached nodes count as done
            for node_id in order:
                entry = held[node_id]
                if entry is not None:
                    results[node_id] = entry.outputs
                    if entry.ui:
                        ui_outputs[node_id] = entry.ui
                        if hooks.on_executed is not None:
                            hooks.on_executed(node_id, entry.ui)
                    continue
                if self._stop.is_set():
                    raise Interrupted(f"prompt {prompt_id} interrupted before node {node_id}")
                if hooks.on_executing is not None:
                    hooks.on_executing(node_id)
                output = self._run_node(prompt_id, prompt, node_id, results, hooks, extra_data, executed)
                self.cache.put(signatures[node_id], output.result, output.ui)
                results[node_id] = output.result
                executed.append(node_id)
                if output.ui:
                    ui_outputs[node_id] = output.ui
                    if hooks.on_executed is not None:
                        hooks.on_executed(node_id, output.ui)
            if hooks.on_executing is not None:
                hooks.on_executing(None)
            return ui_outputs

    def _order(self, prompt: dict[str, Any], outputs: list[str]) -> list[str]:
        """The nodes `outputs` depend on, each after its inputs (outputs in the order given)."""
        order: list[str] = []
        state: dict[str, int] = {}  # 1 visiting, 2 done

        def visit(node_id: str) -> None:
            if state.get(node_id) == 2:
                return
            if state.get(node_id) == 1:
                raise ValueError(f"the prompt has a dependency cycle through node {node_id}")
            if node_id not in prompt:
                raise ValueError(f"the prompt links to node {node_id}, which it does not contain")
            state[node_id] = 1
            for value in (prompt[node_id].get("inputs") or {}).values():
                if is_link(value):
                    visit(str(value[0]))
            state[node_id] = 2
            order.append(node_id)

        for output in outputs:
            visit(output)
        return order

    def _declared(self, node_cls: Any) -> dict[str, list]:
        spec = node_cls.input_types(self.paths)
        return {**spec.get("required", {}), **spec.get("optional", {})}

    def _signatures(self, prompt: dict[str, Any], order: list[str]) -> dict[str, str]:
        sigs: dict[str, str] = {}
        for node_id in order:
            entry = prompt[node_id]
            node_cls = self.registry.get(entry["class_type"])
            declared = self._declared(node_cls)
            constants, links = {}, {}
            for name, value in (entry.get("inputs") or {}).items():
                if name not in declared:
                    continue
                if is_link(value):
                    links[name] = (sigs[str(value[0])], int(value[1]))
                else:
                    constants[name] = value
            try:
                fingerprint = node_cls.fingerprint(constants, self.paths)
            except Exception as exc:  # e.g. an input file vanished: the run reports it on the node
                fingerprint = f"unfingerprintable: {type(exc).__name__}: {exc}"
            sigs[node_id] = signature(entry["class_type"], constants, links, fingerprint)
        return sigs

    def _inputs(self, prompt: dict[str, Any], node_id: str, node_cls: Any,
                results: dict[str, tuple]) -> tuple[dict[str, Any], dict[str, str]]:
        declared = self._declared(node_cls)
        inputs: dict[str, Any] = {}
        for name, value in (prompt[node_id].get("inputs") or {}).items():
            if name not in declared:
                continue
            if is_link(value):
                inputs[name] = results[str(value[0])][int(value[1])]
            else:
                kind = declared[name][0]
                inputs[name] = int(value) if kind == "INT" else float(value) if kind == "FLOAT" else value
        hidden = node_cls.input_types(self.paths).get("hidden", {})
        return inputs, hidden

    def _run_node(self, prompt_id: str, prompt: dict[str, Any], node_id: str, results: dict[str, tuple],
                  hooks: ExecutionHooks, extra_data: dict[str, Any] | None, executed: list[str]) -> NodeOutput:
        class_type = prompt[node_id]["class_type"]
        node_cls = self.registry.get(class_type)
        inputs: dict[str, Any] = {}
        try:
            inputs, hidden = self._inputs(prompt, node_id, node_cls, results)
            for name, kind in hidden.items():
                if kind == "PROMPT":
                    inputs[name] = prompt
                elif kind == "EXTRA_PNGINFO":
                    inputs[name] = (extra_data or {}).get("extra_pnginfo")
                elif kind == "UNIQUE_ID":
                    inputs[name] = node_id
            ctx = NodeContext(self, node_id, class_type, prompt_id, prompt, hooks, extra_data)
            out = node_cls().run(ctx, **inputs)
            if not isinstance(out, NodeOutput):
                out = NodeOutput(tuple(out) if out is not None else ())
            if len(out.result) != len(node_cls.RETURN_TYPES):
                raise RuntimeError(f"node {class_type} returned {len(out.result)} value(s) for its "
                                   f"{len(node_cls.RETURN_TYPES)} output(s) {list(node_cls.RETURN_TYPES)}")
            return out
        except Interrupted:
            raise
        except Exception as exc:
            logger.error("node %s (%s) failed: %s", node_id, class_type, exc, exc_info=logger.isEnabledFor(10))
            notes = getattr(exc, "__notes__", ())
            message = " ".join([str(exc), *map(str, notes)]).strip()
            raise NodeExecutionError(
                node_id, class_type, message, _full_type_name(type(exc)), traceback.format_tb(exc.__traceback__),
                {name: _format_input(value) for name, value in inputs.items() if name not in ("prompt",
                                                                                              "extra_pnginfo")},
                executed) from exc
