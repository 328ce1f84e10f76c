"""Prompt adherence of a text-to-image model on the shapes prompts, scored by a model-free classifier.

For every color x shape x background prompt of `diffblocks.demo_data` ("a red circle on a black background", 90
prompts) and `--seeds` seeds, generate an image and classify it with `diffblocks.demo_data.classify_image`
(nearest named color of the centre vs the border region; shape from the fill ratio of the object's bounding
box). Prints object-color, background-color and shape accuracy (and all three at once).

    python bench/prompt_adherence.py --model DIR [--seeds 2] [--steps 25] [--size 64] [--out-dir DIR]
    python bench/prompt_adherence.py --ground-truth          # the classifier on rendered images (expect 100%)
    torchrun --standalone --nproc_per_node 2 bench/prompt_adherence.py --model DIR   # prompts split over processes

Generation goes through `diffblocks.generate_batch` (image i of prompt p seeded by (--seed, p, i)), so a run with
several processes gives the same images and the same scores as one process.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffblocks.demo_data import all_combinations, caption, classify_image, parse_caption, score  # noqa: E402


def _report(pairs: list[tuple[object, str]], title: str) -> dict[str, float]:
    result = score(pairs)
    print(f"{title}: {int(result['count'])} images")
    for key in ("color", "background", "shape", "all"):
        print(f"  {key:<10} accuracy {result[key]:.1%}")
    confusion: collections.Counter[tuple[str, str]] = collections.Counter()
    for image, text in pairs:
        expected = parse_caption(text)[1]
        got = classify_image(image).shape
        if got != expected:
            confusion[(expected, str(got))] += 1
    if confusion:
        print("  shape confusions (expected -> classified: count):",
              ", ".join(f"{e} -> {g}: {n}" for (e, g), n in confusion.most_common()))
    return result


def ground_truth(seeds: int, size: int) -> dict[str, float]:
    import random

    from diffblocks.demo_data.shapes import random_spec, render

    rng = random.Random(0)
    pairs = [(render(random_spec(*combo, rng), size), caption(*combo))
             for combo in all_combinations() for _ in range(seeds)]
    return _report(pairs, "ground truth (rendered images)")


def generated(args: argparse.Namespace) -> dict[str, float] | None:
    from PIL import Image

    from diffblocks import generate_batch

    out = Path(args.out_dir or tempfile.mkdtemp(prefix="prompt-adherence-"))
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.txt"
    prompts.write_text("".join(caption(*combo) + "\n" for combo in all_combinations()))
    call = {"num_inference_steps": args.steps, "height": args.size, "width": args.size}
    if args.guidance is not None:
        call["guidance_scale"] = args.guidance
    start = time.perf_counter()
    result = generate_batch(args.model, prompts, out, images_per_prompt=args.seeds, seed=args.seed,
                            call_kwargs=call, progress=not args.quiet)
    elapsed = time.perf_counter() - start
    if result.summary is None:  # not rank 0: rank 0 scores everything
        return None
    summary = result.summary
    if summary["lost"]:
        print(f"WARNING: {len(summary['lost'])} image(s) lost (prompts {summary['lost_prompts']}); scoring the rest")
    pairs = [(Image.open(out / entry["file"]), entry["prompt"]) for entry in summary["images"]]
    print(f"model {args.model}: {args.steps} steps, {args.size}x{args.size}, {args.seeds} seed(s) per prompt, "
          f"{result.world_size} process(es), {elapsed:.1f} s; images in {out}")
    return _report(pairs, "generated")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="diffusers-format folder or repo of a text-to-image model")
    parser.add_argument("--ground-truth", action="store_true", help="score rendered images instead (no model)")
    parser.add_argument("--seeds", type=int, default=2, help="images per prompt")
    parser.add_argument("--seed", type=int, default=0, help="base seed")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the preset's)")
    parser.add_argument("--out-dir", help="keep the images here (default: a temporary folder)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.ground_truth:
        ground_truth(args.seeds, args.size)
        return 0
    if not args.model:
        parser.error("give --model DIR (or --ground-truth)")
    generated(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
