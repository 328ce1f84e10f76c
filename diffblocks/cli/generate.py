"""`diffblocks generate`: images from a standard SD / SDXL / Flux folder or Hub repo."""

from __future__ import annotations

import argparse
from typing import Any

from . import generate_batch


def _generate(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from ..runtime.pipeline import ModularPipeline

    if (args.prompt is None) == (args.prompts_file is None):
        raise SystemExit("diffblocks generate: give either --prompt or --prompts-file")
    kwargs: dict[str, Any] = {"prompt": args.prompt, "num_inference_steps": args.steps,
                              "generator": torch.Generator().manual_seed(args.seed)}
    for name in ("negative_prompt", "guidance_scale", "height", "width", "strength", "num_images_per_prompt"):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    if args.image:
        kwargs["image"] = Image.open(args.image).convert("RGB")
    if args.mask:
        if not args.image:
            raise SystemExit("diffblocks generate: --mask needs --image (the image to inpaint)")
        kwargs["mask_image"] = Image.open(args.mask).convert("L")
    if args.prompts_file is not None:
        return generate_batch.run(args, kwargs)
    if args.model.endswith(".safetensors"):  # a single-file checkpoint (LDM / BFL layout)
        pipe = ModularPipeline.from_single_file(args.model, config=args.config)
    else:
        pipe = ModularPipeline.from_pretrained(args.model)
        pipe.load_components()
    pipe.set_progress_bar_config(disable=args.quiet)
    images = pipe(output="images", **kwargs)
    stem, dot, ext = args.out.rpartition(".")
    for i, image in enumerate(images):
        path = args.out if len(images) == 1 else f"{stem or ext}-{i}{dot}{ext if stem else 'png'}"
        image.save(path)
        print(f"Saved {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    gen_p = sub.add_parser("generate", help="generate images with an SD / SDXL folder or repo (model_index.json)")
    gen_p.add_argument("--model", required=True, help="diffusers-format folder or Hub repo id, or a single-file "
                                                       "checkpoint (.safetensors)")
    gen_p.add_argument("--config", help="(single-file --model) diffusers-format folder or repo for configs and the "
                                        "components the file lacks")
    gen_p.add_argument("--prompt", help="the prompt (or --prompts-file)")
    generate_batch.add_arguments(gen_p)
    gen_p.add_argument("--negative-prompt", dest="negative_prompt")
    gen_p.add_argument("--image", help="init image: image-to-image (or inpainting with --mask)")
    gen_p.add_argument("--mask", help="inpainting mask (white = repaint)")
    gen_p.add_argument("--steps", type=int, default=30)
    gen_p.add_argument("--guidance", dest="guidance_scale", type=float)
    gen_p.add_argument("--strength", type=float)
    gen_p.add_argument("--height", type=int)
    gen_p.add_argument("--width", type=int)
    gen_p.add_argument("--num-images", dest="num_images_per_prompt", type=int)
    gen_p.add_argument("--seed", type=int, default=0)
    gen_p.add_argument("--out", default="out.png")
    gen_p.add_argument("--quiet", action="store_true", help="no progress bar")
    gen_p.set_defaults(func=_generate)
