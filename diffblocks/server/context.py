"""What a running node gets from the engine: folders, the shared ComponentsManager, and `run_blocks`, which runs
preset blocks through a `ModularPipeline` wired to the engine's interrupt, progress and preview hooks.

Every node that computes runs our blocks this way, so node execution and Python calls share one execution path
(runtime/execution.py): the engine's interrupt sets the pipelines' `interrupt_event` (a denoise loop stops before
its next step), loop steps report progress through a progress handler, and previews come from `PreviewCallback`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from ..runtime.execution import Interrupted, ProgressEvent

__all__ = ["NodeContext", "PipelineCache"]


class PipelineCache:
    """One `ModularPipeline` per block layout, reused across nodes and prompts (components swapped per run)."""

    def __init__(self, interrupt_event: threading.Event) -> None:
        self._pipes: dict[tuple, Any] = {}
        self._event = interrupt_event
        self._lock = threading.Lock()

    def get(self, blocks: Mapping[str, type]) -> Any:
        from ..blocks import SequentialPipelineBlocks
        from ..runtime.pipeline import ModularPipeline

        key = tuple(blocks.items())
        with self._lock:
            pipe = self._pipes.get(key)
            if pipe is None:
                (name, cls), *rest = key
                block = cls() if not rest else SequentialPipelineBlocks.from_blocks_dict(dict(key))
                pipe = ModularPipeline(block)
                pipe.set_progress_bar_config(disable=True)
                pipe.interrupt_event = self._event
                self._pipes[key] = pipe
            return pipe

    def clear(self) -> None:
        with self._lock:
            self._pipes.clear()


class NodeContext:
    """Handed to `Node.run` for one node of one prompt."""

    def __init__(self, engine: Any, node_id: str, class_type: str, prompt_id: str, prompt: dict[str, Any],
                 hooks: Any, extra_data: dict[str, Any] | None = None) -> None:
        self.engine = engine
        self.node_id = node_id
        self.class_type = class_type
        self.prompt_id = prompt_id
        self.prompt = prompt
        self.hooks = hooks
        self.extra_data = extra_data or {}

    @property
    def paths(self):
        return self.engine.paths

    @property
    def components_manager(self):
        return self.engine.components_manager

    def check_interrupt(self) -> None:
        if self.engine._stop.is_set():
            raise Interrupted(f"interrupted before node {self.node_id} ({self.class_type}) finished")

    def progress(self, value: int, total: int) -> None:
        if self.hooks is not None and self.hooks.on_progress is not None:
            self.hooks.on_progress(self.node_id, value, total)

    def pipeline(self, blocks: Mapping[str, type]) -> Any:
        """The shared ModularPipeline running `blocks` (name -> block class)."""
        return self.engine._pipelines.get(blocks)

    def block_inputs(self, blocks: Mapping[str, Any]) -> set[str]:
        """The input names a call of `blocks` accepts."""
        return set(self.pipeline(blocks).default_call_parameters)

    def run_blocks(self, blocks: Mapping[str, type], components: Mapping[str, Any], output: Any = None,
                   preview: bool = False, preview_size: tuple[int, int] | None = None, **kwargs: Any) -> Any:
        """Run `blocks` (name -> block class) on `components` with `kwargs` as the call inputs.

        Loop steps report progress to the hooks; `preview=True` adds a PreviewCallback feeding `on_preview` (the
        blocks must take `callback_on_step_end`); the engine's interrupt stops the call within one step.
        """
        self.check_interrupt()
        pipe = self.engine._pipelines.get(blocks)
        unknown = sorted(set(components) - set(pipe.component_names))
        if unknown:
            raise ValueError(f"node {self.class_type}: components {unknown} are not used by blocks "
                             f"{list(blocks)}; they take {pipe.component_names}")
        # the pipeline is shared: every pretrained component comes from this call (absent ones are unset)
        updates = {name: components.get(name) for name in pipe.pretrained_component_names}
        updates.update({name: value for name, value in components.items() if value is not None})
        pipe.update_components(**updates)
        handler = self._progress_handler()
        pipe.add_progress_handler(handler)
        if preview and self.hooks is not None and self.hooks.on_preview is not None:
            from ..presets.previews import PreviewCallback

            on_preview = self.hooks.on_preview
            height, width = preview_size if preview_size is not None else (None, None)
            kwargs["callback_on_step_end"] = PreviewCallback(
                lambda step, timestep, images: on_preview(self.node_id, images[0]), every=1,
                height=height, width=width)
        try:
            result = pipe(output=output, **kwargs)
        finally:
            pipe.remove_progress_handler(handler)
        self.check_interrupt()
        return result

    def _progress_handler(self) -> Callable[[ProgressEvent], None]:
        stop = self.engine._stop

        def handler(event: ProgressEvent) -> None:
            if stop.is_set():  # an interrupt that came while the call's executor was being set up
                raise Interrupted(f"interrupted in node {self.node_id} ({self.class_type})")
            if event.kind == "step" and event.total:
                self.progress(event.step, event.total)

        return handler
