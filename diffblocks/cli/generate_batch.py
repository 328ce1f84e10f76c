"""`diffblocks generate --prompts-file FILE --out-dir DIR`: a batch of prompts, split over the processes of
`torchrun` / `accelerate launch` (see docs/distributed.md; the work is done by `runtime.distributed`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts-file", dest="prompts_file",
                        help="instead of --prompt: one prompt per line (or .jsonl objects with \"prompt\" and other "
                             "inputs), split over the processes of torchrun / accelerate launch; needs --out-dir (default: none)")
    parser.add_argument("--images-per-prompt", dest="images_per_prompt", type=int, default=1,
                        help="(--prompts-file) images per prompt, each seeded by (--seed, prompt index, image index) "
                             "(default: %(default)s)")
    parser.add_argument("--out-dir", dest="out_dir", help="(--prompts-file) folder for the images and summary.json (default: none)")


def run(args: argparse.Namespace, kwargs: dict[str, Any]) -> int:
    """Draw the batch with the pipeline inputs `kwargs` (those common to every prompt); the exit status."""
    from ..runtime.distributed import generate_batch

    kwargs = {k: v for k, v in kwargs.items() if k not in ("prompt", "generator")}
    if kwargs.pop("num_images_per_prompt", None) is not None:
        raise SystemExit("diffblocks generate: with --prompts-file use --images-per-prompt, not --num-images")
    if not args.out_dir:
        raise SystemExit("diffblocks generate: --prompts-file needs --out-dir (where the images and summary.json go)")
    model = getattr(args, "model_loader", None) or args.model  # a loader when pipeline options are given
    # --device picks the kind of device (and with it the process group: gloo for cpu); each rank still
    # takes its own GPU under a launcher
    result = generate_batch(model, args.prompts_file, args.out_dir, images_per_prompt=args.images_per_prompt,
                            seed=args.seed, call_kwargs=kwargs, device=getattr(args, "device", None),
                            progress=not args.quiet)
    summary = result.summary
    if summary is not None:
        print(f"Wrote {len(summary['images'])} of {summary['num_images']} image(s) with {result.world_size} "
              f"process(es) to {args.out_dir} (summary.json)")
        if summary["lost"]:
            print(f"LOST {len(summary['lost'])} image(s) of prompt(s) {summary['lost_prompts']}; see summary.json",
                  file=sys.stderr)
    elif result.lost:
        print(f"rank {result.rank}: LOST prompt(s) {sorted({job.prompt_index for job, _ in result.lost})}",
              file=sys.stderr)
    return result.exit_code
