"""Generation parameters stored in PNG text chunks, written by `generate` and read by `info`.

Two chunks: `parameters`, the A1111-style text that image browsers and other UIs read (prompt, then
`Negative prompt: ...`, then `Steps: N, Sampler: ..., CFG scale: ..., Seed: ..., Size: WxH, ...`), and
`diffblocks`, JSON with the exact call (pipeline inputs, seed, scheduler, device, dtype) to reproduce the image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["JSON_KEY", "PARAMETERS_KEY", "a1111_parameters", "read_png_metadata", "save_png"]

PARAMETERS_KEY = "parameters"
JSON_KEY = "diffblocks"


def _number(value: float) -> str:
    return f"{value:g}"


def a1111_parameters(record: dict[str, Any], size: tuple[int, int]) -> str:
    """The `parameters` text of one image from its `diffblocks` record (see `generate`)."""
    call = record["call"]
    lines = [str(call.get("prompt") or "")]
    if call.get("negative_prompt"):
        lines.append(f"Negative prompt: {call['negative_prompt']}")
    fields = [("Steps", call.get("num_inference_steps")), ("Sampler", record.get("sampler"))]
    if record.get("karras"):
        fields.append(("Schedule type", "Karras"))
    if record.get("guidance_scale") is not None:
        fields.append(("CFG scale", _number(record["guidance_scale"])))
    fields += [("Seed", record.get("seed")), ("Size", f"{size[0]}x{size[1]}"), ("Model", record.get("model_name"))]
    if call.get("image") is not None:
        fields.append(("Denoising strength", _number(record["strength"]) if record.get("strength") is not None
                       else None))
    if call.get("clip_skip") is not None:
        fields.append(("Clip skip", int(call["clip_skip"]) + 1))  # A1111 counts the last layer as 1
    if record.get("controlnet"):
        fields.append(("ControlNet", Path(record["controlnet"]).name))
    if record.get("loras"):  # no commas: A1111 readers split the line on ", "
        fields.append(("Lora", " ".join(f"{Path(lora['path']).stem}:{_number(lora['scale'])}"
                                        for lora in record["loras"])))
    fields.append(("Version", f"diffblocks {record.get('version')}"))
    lines.append(", ".join(f"{key}: {value}" for key, value in fields if value is not None))
    return "\n".join(lines)


def save_png(image: Any, path: str | Path, record: dict[str, Any]) -> None:
    """Save a PIL image as PNG with the `parameters` text and the `diffblocks` JSON chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS_KEY, a1111_parameters(record, image.size))
    info.add_text(JSON_KEY, json.dumps(record, sort_keys=True))
    image.save(path, format="PNG", pnginfo=info)


def read_png_metadata(path: str | Path) -> dict[str, Any]:
    """`{"parameters": str | None, "diffblocks": dict | None}` from a PNG's text chunks."""
    from PIL import Image

    with Image.open(path) as image:
        if image.format != "PNG":
            raise ValueError(f"{path} is a {image.format} image; generation parameters are read from PNG files")
        text = dict(getattr(image, "text", {}) or {})
    record = text.get(JSON_KEY)
    if record is not None:
        try:
            record = json.loads(record)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: the {JSON_KEY!r} chunk is not valid JSON ({exc})") from exc
    return {PARAMETERS_KEY: text.get(PARAMETERS_KEY), JSON_KEY: record}
