"""The trained demo model shipped inside the package (package data), and its recommended call settings.

`demo_model_path()` is a standard diffusers-format Stable Diffusion folder (AutoencoderKL, UNet2DConditionModel,
CLIP text encoder and tokenizer, Euler scheduler), trained from scratch by `make demo-model` on procedurally drawn
64x64 images captioned ``"a {color} {shape} on a {background} background"`` (see `diffblocks.demo_data` and the
folder's README.md). It draws those prompts and nothing else; load it like any other folder::

    pipe = ModularPipeline.from_pretrained(demo_model_path())
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_GUIDANCE_SCALE", "DEMO_PROMPT", "DEMO_STEPS", "demo_model_path"]

DEMO_PROMPT = "a red circle on a black background"
DEMO_STEPS = 25
DEMO_GUIDANCE_SCALE = 4.0

_DEMO_MODEL = Path(__file__).resolve().parent / "demo_model"


def demo_model_path() -> Path:
    """The folder of the bundled trained demo model (offline; no download)."""
    if not (_DEMO_MODEL / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the bundled demo model is missing from {_DEMO_MODEL} (an install without package data?): reinstall "
            f"diffblocks, or rebuild it from a source checkout with `make demo-model`")
    return _DEMO_MODEL
