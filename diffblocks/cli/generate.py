"""`diffblocks generate`: images from a standard SD / SDXL / Flux folder or Hub repo.

Each PNG carries its generation parameters (see `png_metadata`; `diffblocks info IMAGE` prints them).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

from . import generate_batch, pipeline_options
from .png_metadata import save_png

# CLI option -> pipeline input, for the plain values passed through when given
_PASS_THROUGH = ("negative_prompt", "guidance_scale", "height", "width", "strength", "num_images_per_prompt",
                 "clip_skip")


def _seed(requested: int) -> int:
    return requested if requested >= 0 else random.randrange(2**32)


def _call_kwargs(args: argparse.Namespace, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the pipeline inputs, the same as JSON: images by path, the generator by seed)."""
    import torch
    from PIL import Image

    kwargs: dict[str, Any] = {"prompt": args.prompt, "num_inference_steps": args.steps,
                              "generator": torch.Generator().manual_seed(seed)}
    recorded: dict[str, Any] = {"prompt": args.prompt, "num_inference_steps": args.steps,
                                "generator": {"device": "cpu", "manual_seed": seed}}
    for name in _PASS_THROUGH:
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = recorded[name] = value
    images = (("image", args.image, "RGB"), ("mask_image", args.mask, "L"), ("control_image", args.control_image, "RGB"))
    for name, path, mode in images:
        if path:
            kwargs[name] = Image.open(path).convert(mode)
            recorded[name] = str(Path(path).resolve())
    return kwargs, recorded


def _out_paths(out: str, count: int) -> list[str]:
    if count == 1:
        return [out]
    stem, dot, ext = out.rpartition(".")
    return [f"{stem or ext}-{i}{dot}{ext if stem else 'png'}" for i in range(count)]


def _record(args: argparse.Namespace, pipe: Any, recorded: dict[str, Any], seed: int, device: str, dtype: Any,
            index: int) -> dict[str, Any]:
    from .. import __version__

    scheduler = pipe.scheduler
    call = dict(recorded)
    guider = getattr(pipe, "guider", None) if "guider" in pipe.component_names else None
    guidance = recorded.get("guidance_scale", getattr(guider, "guidance_scale", None))
    return {
        "version": __version__, "model": args.model, "model_name": Path(str(args.model).rstrip("/")).name,
        "device": device, "dtype": str(dtype).replace("torch.", ""), "seed": seed, "image_index": index,
        "scheduler": type(scheduler).__name__ if scheduler is not None else None,
        "sampler": pipeline_options.sampler_name(scheduler) if scheduler is not None else None,
        "karras": bool(getattr(getattr(scheduler, "config", None), "use_karras_sigmas", False)),
        "guidance_scale": guidance, "strength": recorded.get("strength"), "controlnet": args.controlnet,
        "loras": [{"path": path, "scale": scale} for path, scale in (args.lora or [])], "call": call,
    }


def _check_before_loading(args: argparse.Namespace) -> None:
    """User errors found before any model is loaded or any step runs."""
    from .blocks_arg import check_model_target

    check_model_target(args.model, "--model")
    if args.prompts_file is None:
        folder = Path(args.out).expanduser().parent
        if not folder.is_dir():
            raise FileNotFoundError(f"--out {args.out!r}: the folder {str(folder)!r} does not exist; create it first "
                                    f"(nothing was generated)")


def _generate(args: argparse.Namespace) -> int:
    if args.model is None:
        from ..assets import demo_model_path

        args.model = str(demo_model_path())
    pipeline_options.check_arguments(args)
    if (args.prompt is None) == (args.prompts_file is None):
        raise SystemExit("diffblocks generate: give either --prompt or --prompts-file")
    if args.mask and not args.image:
        raise SystemExit("diffblocks generate: --mask needs --image (the image to inpaint)")
    _check_before_loading(args)
    seed = _seed(args.seed)
    kwargs, recorded = _call_kwargs(args, seed)
    if args.prompts_file is not None:
        args.seed = seed
        if any(getattr(args, n) for n in ("device", "dtype", "scheduler", "karras", "controlnet", "lora")):
            def loader(device: Any) -> Any:
                return pipeline_options.load_pipeline(
                    args, str(device), pipeline_options.resolve_dtype(args.dtype, str(device)))
            args.model_loader = loader
        return generate_batch.run(args, kwargs)

    device = pipeline_options.resolve_device(args.device)
    dtype = pipeline_options.resolve_dtype(args.dtype, device)
    pipe = pipeline_options.load_pipeline(args, device, dtype)
    pipe.set_progress_bar_config(disable=args.quiet)
    start = time.perf_counter()
    images = pipe(output="images", **kwargs)
    elapsed = time.perf_counter() - start
    for i, (image, path) in enumerate(zip(images, _out_paths(args.out, len(images)))):
        save_png(image, path, _record(args, pipe, recorded, seed, device, dtype, i))
        print(f"Saved {path}")
    print(f"Seed {seed}: {len(images)} image(s) in {elapsed:.2f} s ({args.steps} steps, "
          f"{type(pipe.scheduler).__name__}, {device}, {str(dtype).replace('torch.', '')})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    gen_p = sub.add_parser("generate", help="generate images with an SD / SDXL / Flux folder or repo "
                                            "(model_index.json); parameters are stored in each PNG")
    gen_p.add_argument("--model", help="diffusers-format folder or Hub repo id, or a single-file checkpoint "
                                       "(.safetensors) (default: the bundled demo model, which draws 'a {color} "
                                       "{shape} on a {background} background')")
    gen_p.add_argument("--config", help="(single-file --model) diffusers-format folder or repo for configs and the "
                                        "components the file lacks (default: the shipped standard config)")
    gen_p.add_argument("--prompt", help="the prompt (or --prompts-file) (default: none)")
    generate_batch.add_arguments(gen_p)
    gen_p.add_argument("--negative-prompt", dest="negative_prompt",
                       help="what the image should not show (default: none; empty unconditional prompt)")
    gen_p.add_argument("--image", help="init image: image-to-image (or inpainting with --mask) (default: none, "
                                       "text-to-image)")
    gen_p.add_argument("--mask", help="inpainting mask, white = repaint; needs --image (default: none)")
    gen_p.add_argument("--steps", type=int, default=30, help="denoising steps (default: %(default)s)")
    gen_p.add_argument("--guidance", dest="guidance_scale", type=float,
                       help="CFG scale (default: the model's guider, 7.5 for SD, 5.0 for SDXL, off for Flux)")
    gen_p.add_argument("--strength", type=float,
                       help="image-to-image / inpainting: how much of the image to redo, 0-1 (default: the preset's, "
                            "0.8 for image-to-image, 1.0 for inpainting)")
    gen_p.add_argument("--height", type=int, help="image height in pixels (default: the model's sample size)")
    gen_p.add_argument("--width", type=int, help="image width in pixels (default: the model's sample size)")
    gen_p.add_argument("--num-images", dest="num_images_per_prompt", type=int,
                       help="images per prompt, one batch (default: 1)")
    gen_p.add_argument("--clip-skip", dest="clip_skip", type=int,
                       help="CLIP layers to skip from the end, as in diffusers: 1 = penultimate layer (A1111's "
                            "'Clip skip: 2'); SD / SDXL only (default: none)")
    gen_p.add_argument("--seed", type=int, default=0,
                       help="random seed; -1 draws one (printed and stored in the PNG) (default: %(default)s)")
    gen_p.add_argument("--out", default="out.png",
                       help="output PNG; with several images NAME-0.png, NAME-1.png, ... (default: %(default)s)")
    gen_p.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")
    pipeline_options.add_arguments(gen_p)
    gen_p.set_defaults(func=_generate)
