"""Every preset block as a node: `diffblocks/<family>/<BlockClass>` (category `diffblocks/<family>`).

A block node's ports come from the block's `node_spec()`:
- `pipeline` (DIFFBLOCKS_PIPELINE, required when the block uses components): a loaded pipeline, from the
  `diffblocks/LoadPipeline` node; the block runs on its components;
- `state` (DIFFBLOCKS_STATE, optional): the values earlier block nodes produced; the block reads the ones it
  declares as inputs, so chaining `state` runs a preset step by step;
- each declared input: a widget for plain values (INT / FLOAT with min/max/step/default, BOOLEAN, STRING -
  multiline for prompts -, COMBO for `output_type`), `generator` as an INT seed widget (a CPU torch.Generator
  seeded with it), IMAGE / MASK / LATENT sockets for images, masks and latents, and our own sockets for the rest
  (DIFFBLOCKS_EMBEDS for embeddings, DIFFBLOCKS_TENSOR, DIFFBLOCKS_VALUE). A plain value without a default is a
  socket-only input (ComfyUI's `forceInput`), so nothing is passed unless it is linked. An empty prompt string
  means "not given";
- outputs: the updated `state`, then each declared output (IMAGE for `images`, LATENT for `latents`).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

from ...blocks import ModularPipelineBlocks
from .base import MAX_RESOLUTION, MAX_SEED, Node, combo, socket
from .values import FAMILIES, family_module, nchw_to_image

logger = logging.getLogger(__name__)

__all__ = ["LoadPipeline", "block_node", "port_spec", "preset_block_nodes"]

IMAGE_INPUTS = {"image", "control_image", "ip_adapter_image"}
MASK_INPUTS = {"mask_image"}
LATENT_PORTS = {"latents", "image_latents"}
_INT_RANGES = {"num_inference_steps": (1, 10000, 1), "height": (16, MAX_RESOLUTION, 8), "width": (16, MAX_RESOLUTION, 8),
               "num_images_per_prompt": (1, 4096, 1), "clip_skip": (0, 24, 1), "max_sequence_length": (1, 512, 1),
               "padding_mask_crop": (0, MAX_RESOLUTION, 1)}
_UNIT_FLOATS = {"strength", "eta", "denoising_start", "denoising_end", "control_guidance_start",
                "control_guidance_end", "guidance_rescale"}


def _base_type(type_str: str) -> str:
    parts = [p.strip() for p in type_str.split("|") if p.strip() not in ("None", "NoneType")]
    return parts[0] if len(parts) == 1 else type_str


def port_spec(port: dict[str, Any]) -> tuple[list, bool]:
    """(ComfyUI input spec, is a widget) for one `node_spec()` input."""
    name, kind, default = port["name"], _base_type(port["type"]), port["default"]
    tip = {"tooltip": port["description"]} if port.get("description") else {}
    if name == "generator":
        return ["INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                        "tooltip": "seed of the CPU torch.Generator passed as `generator`"}], True
    if name in IMAGE_INPUTS:
        return socket("IMAGE", **tip), False
    if name in MASK_INPUTS:
        return socket("MASK", **tip), False
    if name in LATENT_PORTS:
        return socket("LATENT", **tip), False
    if name == "output_type":
        return combo(["pil", "np", "pt", "latent"], default=default or "pil", **tip), True
    if "prompt" in name and kind in ("str", "list[str] | str"):
        return ["STRING", {"multiline": True, "default": default or "", **tip}], True
    if kind == "bool":
        return (["BOOLEAN", {"default": bool(default), **tip}], True) if default is not None else \
            (["BOOLEAN", {"forceInput": True, **tip}], False)
    if kind == "int":
        lo, hi, step = _INT_RANGES.get(name, (0, 2**31 - 1, 1))
        opts = {"min": lo, "max": hi, "step": step, **tip}
        return (["INT", {"default": int(default), **opts}], True) if default is not None else \
            (["INT", {"forceInput": True, **opts}], False)
    if kind == "float":
        lo, hi = (0.0, 1.0) if name in _UNIT_FLOATS else (-10000.0, 10000.0)
        opts = {"min": lo, "max": hi, "step": 0.01, **tip}
        return (["FLOAT", {"default": float(default), **opts}], True) if isinstance(default, (int, float)) else \
            (["FLOAT", {"forceInput": True, **opts}], False)
    if kind == "str":
        return (["STRING", {"default": default, **tip}], True) if isinstance(default, str) else \
            (["STRING", {"forceInput": True, **tip}], False)
    if name.endswith("_embeds") or name.endswith("embeds"):
        return socket("DIFFBLOCKS_EMBEDS", **tip), False
    if "Tensor" in kind:
        return socket("DIFFBLOCKS_TENSOR", **tip), False
    return socket("DIFFBLOCKS_VALUE", **tip), False


def _output_type(name: str, type_str: str) -> str:
    if name == "images":
        return "IMAGE"
    if name in LATENT_PORTS:
        return "LATENT"
    if name.endswith("embeds"):
        return "DIFFBLOCKS_EMBEDS"
    if "Tensor" in type_str:
        return "DIFFBLOCKS_TENSOR"
    return "DIFFBLOCKS_VALUE"


def _to_image(images: Any) -> torch.Tensor:
    """A block's `images` (list of PIL, numpy batch, or (B, C, H, W) tensor in [0, 1]) -> IMAGE."""
    import numpy as np

    if isinstance(images, torch.Tensor):
        return nchw_to_image(images) if images.ndim == 4 and images.shape[1] in (1, 3, 4) else images
    if isinstance(images, np.ndarray):
        return torch.from_numpy(images).float()
    if isinstance(images, list) and images and hasattr(images[0], "convert"):
        return torch.stack([torch.from_numpy(np.asarray(i.convert("RGB"), dtype=np.float32) / 255.0)
                            for i in images])
    return images


def _from_port(name: str, value: Any) -> Any:
    """A node input value -> what the block takes."""
    import PIL.Image

    if name == "generator":
        return torch.Generator().manual_seed(int(value))
    if name in LATENT_PORTS and isinstance(value, dict):
        return value["samples"]
    if name in IMAGE_INPUTS and isinstance(value, torch.Tensor):
        array = (value.float().cpu().numpy() * 255.0).round().clip(0, 255).astype("uint8")
        pictures = [PIL.Image.fromarray(a) for a in array]
        return pictures[0] if len(pictures) == 1 else pictures
    if name in MASK_INPUTS and isinstance(value, torch.Tensor):
        mask = value if value.ndim == 3 else value[None]
        array = (mask.float().cpu().numpy() * 255.0).round().clip(0, 255).astype("uint8")
        pictures = [PIL.Image.fromarray(a, "L") for a in array]
        return pictures[0] if len(pictures) == 1 else pictures
    return value


def block_node(cls: type[ModularPipelineBlocks], name: str, category: str) -> type[Node]:
    """A Node class running block class `cls` (see the module docstring)."""
    block = cls()
    spec = block.node_spec()
    required: dict[str, list] = {}
    optional: dict[str, list] = {}
    if spec["components"]:
        required["pipeline"] = socket("DIFFBLOCKS_PIPELINE", tooltip="the pipeline whose components the block "
                                                                      "runs on (diffblocks/LoadPipeline)")
    optional["state"] = socket("DIFFBLOCKS_STATE", tooltip="values produced by earlier block nodes")
    port_names: list[str] = []
    for port in spec["inputs"]:
        if port["kwargs_type"] and port["name"].startswith("**"):
            continue  # a kwargs group is reached through `state`
        # every block input is optional on the node: a required one may come through `state` (checked when the
        # block runs, with the block's own error naming it)
        optional[port["name"]] = port_spec(port)[0]
        port_names.append(port["name"])
    outputs = [o for o in spec["outputs"] if o["name"]]
    description = spec["description"] or inspect.getdoc(cls) or ""
    doc_lines = [description, "", "Inputs:"] + [
        f"  {p['name']} ({p['type']}{', required' if p['required'] else ''}): {p['description']}"
        for p in spec["inputs"]] + ["Outputs:"] + [f"  {o['name']} ({o['type']}): {o['description']}"
                                                    for o in outputs]
    component_names = [c["name"] for c in spec["components"]]
    attrs = {
        "NAME": name, "DISPLAY_NAME": f"{cls.__name__} ({category.split('/')[-1]})", "CATEGORY": category,
        "DESCRIPTION": "\n".join(doc_lines).strip(), "PYTHON_MODULE": cls.__module__,
        "RETURN_TYPES": ("DIFFBLOCKS_STATE", *[_output_type(o["name"], o["type"]) for o in outputs]),
        "RETURN_NAMES": ("state", *[o["name"] for o in outputs]),
        "_block_cls": cls, "_port_names": tuple(port_names), "_output_names": tuple(o["name"] for o in outputs),
        "_component_names": tuple(component_names),
        "_spec": {"required": required, "optional": optional},
    }
    return type(f"BlockNode_{cls.__name__}", (BlockNode,), attrs)


class BlockNode(Node):
    _block_cls: type[ModularPipelineBlocks]
    _port_names: tuple[str, ...] = ()
    _output_names: tuple[str, ...] = ()
    _component_names: tuple[str, ...] = ()
    _spec: dict[str, dict[str, list]] = {}

    @classmethod
    def input_types(cls, paths):
        return cls._spec

    def run(self, ctx, pipeline=None, state=None, **inputs):
        blocks = {"block": self._block_cls}
        accepted = ctx.block_inputs(blocks)
        kwargs = {k: v for k, v in (state or {}).items() if k in accepted and v is not None}
        for name, value in inputs.items():
            if value is None or (isinstance(value, str) and value == "" and "prompt" in name):
                continue
            kwargs[name] = _from_port(name, value)
        components: dict[str, Any] = {}
        if self._component_names:
            if pipeline is None:
                raise ValueError(f"{self.class_type()} needs a pipeline input (diffblocks/LoadPipeline)")
            stage = ctx.pipeline(blocks)
            components = {n: getattr(pipeline, n, None) for n in stage.component_names
                          if getattr(pipeline, n, None) is not None}
        result = ctx.run_blocks(blocks, components, **kwargs)
        values = {k: v for k, v in result.values.items() if k != "generator"}  # a Generator is consumed: not passed on
        merged = {**(state or {}), **values}
        outputs = []
        for name in self._output_names:
            value = result.get(name)
            if name == "images" and value is not None:
                value = _to_image(value)
            elif name in LATENT_PORTS and value is not None:
                value = {"samples": value}
            outputs.append(value)
        return (merged, *outputs)


class LoadPipeline(Node):
    NAME = "diffblocks/LoadPipeline"
    DISPLAY_NAME = "Load Pipeline (diffblocks)"
    CATEGORY = "diffblocks"
    DESCRIPTION = ("Loads a checkpoint from the models folder as a diffblocks pipeline, whose components the "
                   "diffblocks/<family>/<Block> nodes run on.")
    RETURN_TYPES = ("DIFFBLOCKS_PIPELINE",)
    RETURN_NAMES = ("pipeline",)

    @classmethod
    def input_types(cls, paths):
        from .loaders import checkpoint_names

        return {"required": {"ckpt_name": combo(checkpoint_names(paths))}}

    @classmethod
    def fingerprint(cls, inputs, paths):
        from .loaders import CheckpointLoaderSimple

        return CheckpointLoaderSimple.fingerprint(inputs, paths)

    def run(self, ctx, ckpt_name):
        from .loaders import load_checkpoint

        return (load_checkpoint(ctx, ckpt_name),)


def _family_blocks(family: str) -> list[type[ModularPipelineBlocks]]:
    module = family_module(family)
    found: dict[str, type[ModularPipelineBlocks]] = {}
    for attr in sorted(dir(module)):
        value = getattr(module, attr)
        if attr.endswith("_BLOCKS") and hasattr(value, "values"):
            for cls in value.values():
                found.setdefault(cls.__name__, cls)
        elif isinstance(value, type) and issubclass(value, ModularPipelineBlocks) and attr in getattr(
                module, "__all__", ()):
            found.setdefault(value.__name__, value)
    usable = []
    for key in sorted(found):
        try:
            found[key]()
        except (TypeError, ValueError) as exc:  # an abstract base (e.g. a loop wrapper without sub-blocks)
            logger.debug("%s: %s is not a runnable block (%s); no node", family, key, exc)
            continue
        usable.append(found[key])
    return usable


def preset_block_nodes() -> list[type[Node]]:
    nodes: list[type[Node]] = [LoadPipeline]
    for family in FAMILIES:
        for cls in _family_blocks(family):
            nodes.append(block_node(cls, f"diffblocks/{family}/{cls.__name__}", f"diffblocks/{family}"))
    return nodes
