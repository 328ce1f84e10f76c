"""ControlNet nodes: ControlNetLoader and ControlNetApplyAdvanced.

ControlNets are diffusers folders (config.json + weights) or single `.safetensors` files under
`--models/controlnet`. Applying one records a hint (net, image, strength, start/end percent) on the conditioning;
the sampler then runs the family's ControlNet blocks (`CONTROLNET_BLOCKS`) with them, several hints being a
multi-ControlNet call (SD 1.x/2.x and SDXL, text-to-image).
"""

from __future__ import annotations

from dataclasses import replace

from .base import Node, combo, float_spec, socket
from .loaders import model_files, resolve_model_file
from .values import ControlHint

__all__ = ["ControlNetApplyAdvanced", "ControlNetLoader", "controlnet_names"]

_KIND = dict(top_level=False, marker="config.json")


def controlnet_names(paths) -> list[str]:
    return sorted(model_files(paths, "controlnet", **_KIND))


class ControlNetLoader(Node):
    CATEGORY = "loaders"
    DISPLAY_NAME = "Load ControlNet Model"
    DESCRIPTION = "Loads a ControlNet (a diffusers folder or a single .safetensors file under models/controlnet)."
    RETURN_TYPES = ("CONTROL_NET",)

    @classmethod
    def input_types(cls, paths):
        return {"required": {"control_net_name": combo(controlnet_names(paths))}}

    @classmethod
    def fingerprint(cls, inputs, paths):
        from .loaders import file_fingerprint

        return file_fingerprint(resolve_model_file(paths, "controlnet", inputs["control_net_name"], **_KIND))

    def run(self, ctx, control_net_name):
        from ...components.models import ControlNetModel

        path = resolve_model_file(ctx.paths, "controlnet", control_net_name, **_KIND)
        net = ControlNetModel.from_pretrained(str(path)) if path.is_dir() else ControlNetModel.from_single_file(
            str(path))
        net.eval()
        ctx.components_manager.add("controlnet", net, f"controlnet:{control_net_name}")
        return (net,)


class ControlNetApplyAdvanced(Node):
    CATEGORY = "conditioning/controlnet"
    DISPLAY_NAME = "Apply ControlNet"
    DESCRIPTION = ("Guides the sampler with a ControlNet and a control image from start_percent to end_percent of "
                   "the steps, scaled by strength (applied to the positive and negative conditioning alike).")
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")

    @classmethod
    def input_types(cls, paths):
        return {"required": {"positive": socket("CONDITIONING"), "negative": socket("CONDITIONING"),
                             "control_net": socket("CONTROL_NET"), "image": socket("IMAGE"),
                             "strength": float_spec(1.0, min=0.0, max=10.0, step=0.01),
                             "start_percent": float_spec(0.0, min=0.0, max=1.0, step=0.001),
                             "end_percent": float_spec(1.0, min=0.0, max=1.0, step=0.001)},
                "optional": {"vae": socket("VAE")}}

    @classmethod
    def check(cls, inputs, paths):
        start, end = inputs.get("start_percent"), inputs.get("end_percent")
        if start is not None and end is not None and start >= end:
            return [("start_percent", f"start_percent ({start}) must be below end_percent ({end})")]
        return []

    def run(self, ctx, positive, negative, control_net, image, strength, start_percent, end_percent, vae=None):
        if strength == 0:
            return (positive, negative)
        hint = ControlHint(control_net, image, float(strength), float(start_percent), float(end_percent))
        return (replace(positive, controls=positive.controls + (hint,)),
                replace(negative, controls=negative.controls + (hint,)))
