"""`NodeRegistry`: the node classes a server offers, described in ComfyUI's `/object_info` format.

Per class (ComfyUI's server.py `node_info`): `input` (`required` / `optional` / `hidden` specs), `input_order`,
`output`, `output_is_list`, `output_name`, `name`, `display_name`, `description`, `python_module`, `category`,
`output_node`, `deprecated`, `experimental` (and `output_tooltips` where a node has them).

It holds the ComfyUI core nodes (core.py), every block of the sd / sdxl / flux presets as a
`diffblocks/<family>/<Block>` node (blocks.py, built on first use), and the block classes a user registers.
"""

from __future__ import annotations

import threading
from typing import Any

from .base import Node, ServerPaths

__all__ = ["NodeRegistry"]


class NodeRegistry:
    def __init__(self, *, paths: ServerPaths | None = None, include_blocks: bool = True) -> None:
        from .core import CORE_NODES

        self.paths = paths
        self._nodes: dict[str, type[Node]] = {}
        self._include_blocks = include_blocks
        self._blocks_loaded = False
        self._lock = threading.RLock()
        for node in CORE_NODES:
            self.add(node)

    def bind_paths(self, paths: ServerPaths) -> None:
        """The folders file-listing inputs (checkpoints, input images) are read from."""
        self.paths = paths

    # -- contents -------------------------------------------------------------------------------------------
    def add(self, node: type[Node]) -> type[Node]:
        if not (isinstance(node, type) and issubclass(node, Node)):
            raise TypeError(f"NodeRegistry.add needs a Node subclass, got {node!r}")
        with self._lock:
            self._nodes[node.class_type()] = node
        return node

    def register_block(self, cls: type, name: str | None = None) -> type[Node]:
        """Offer a block class (a `ModularPipelineBlocks` subclass, e.g. custom blocks loaded from the Hub with
        trust_remote_code) as a node named `name` (default `diffblocks/custom/<ClassName>`)."""
        from ...blocks import ModularPipelineBlocks
        from .blocks import block_node

        if not (isinstance(cls, type) and issubclass(cls, ModularPipelineBlocks)):
            raise TypeError(f"register_block needs a ModularPipelineBlocks subclass, got {cls!r}")
        node = block_node(cls, name or f"diffblocks/custom/{cls.__name__}", "diffblocks/custom")
        return self.add(node)

    def _ensure_blocks(self) -> None:
        if self._blocks_loaded or not self._include_blocks:
            return
        with self._lock:
            if self._blocks_loaded:
                return
            from .blocks import preset_block_nodes

            for node in preset_block_nodes():
                self._nodes.setdefault(node.class_type(), node)
            self._blocks_loaded = True

    def __contains__(self, class_type: object) -> bool:
        if class_type in self._nodes:
            return True
        self._ensure_blocks()
        return class_type in self._nodes

    def get(self, class_type: str) -> type[Node]:
        if class_type not in self:
            raise KeyError(f"no node class {class_type!r} (known: {len(self._nodes)} classes, e.g. "
                           f"{sorted(self._nodes)[:5]})")
        return self._nodes[class_type]

    def names(self) -> list[str]:
        self._ensure_blocks()
        return list(self._nodes)

    # -- /object_info ---------------------------------------------------------------------------------------
    def node_info(self, class_type: str) -> dict[str, Any]:
        node = self.get(class_type)
        inputs = node.input_types(self.paths)
        outputs = list(node.RETURN_TYPES)
        info: dict[str, Any] = {
            "input": inputs,
            "input_order": {section: list(specs) for section, specs in inputs.items()},
            "output": outputs,
            "output_is_list": list(node.OUTPUT_IS_LIST) if node.OUTPUT_IS_LIST is not None else [False] * len(outputs),
            "output_name": list(node.RETURN_NAMES) if node.RETURN_NAMES is not None else outputs,
            "name": class_type,
            "display_name": node.DISPLAY_NAME or class_type,
            "description": node.DESCRIPTION,
            "python_module": node.PYTHON_MODULE,
            "category": node.CATEGORY,
            "output_node": bool(node.OUTPUT_NODE),
            "deprecated": bool(node.DEPRECATED),
            "experimental": bool(node.EXPERIMENTAL),
        }
        if node.OUTPUT_TOOLTIPS is not None:
            info["output_tooltips"] = list(node.OUTPUT_TOOLTIPS)
        return info

    def object_info(self) -> dict[str, dict[str, Any]]:
        return {name: self.node_info(name) for name in self.names()}
