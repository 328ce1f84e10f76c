"""Captioned images of one colored shape on a plain background, generated deterministically from a seed.

Every color x shape x background combination (object color != background color: 6 x 5 x 3 = 90) appears the
same number of times. The object is roughly centred (offset up to `MAX_OFFSET` of the image side) and its size
(circle diameter, square side, triangle base and height) is between `MIN_SIZE` and `MAX_SIZE` of the side.

    python -m diffblocks.demo_data.shapes OUT_DIR [--seed 0] [--per-combination 4] [--size 64]

writes OUT_DIR/<n>.png and OUT_DIR/metadata.jsonl (`{"file_name": ..., "text": caption}` per line), the
layout `diffblocks train text2image --train_data_dir` reads.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "MAX_OFFSET",
    "MAX_SIZE",
    "MIN_SIZE",
    "SHAPES",
    "ShapeSpec",
    "all_combinations",
    "caption",
    "generate_dataset",
    "parse_caption",
    "random_spec",
    "render",
]

# the named colors (also the palette the classifier matches against); backgrounds use the same names
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (35, 65, 215),
    "yellow": (240, 215, 35),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
BACKGROUNDS = tuple(COLORS)
SHAPES = ("circle", "square", "triangle")
MIN_SIZE, MAX_SIZE = 0.35, 0.70  # object size as a fraction of the image side
MAX_OFFSET = 0.06  # largest shift of the object's centre from the image centre, as a fraction of the side

_CAPTION = re.compile(r"a (\w+) (\w+) on a (\w+) background")


@dataclass(frozen=True)
class ShapeSpec:
    """One image: what is drawn (color, shape, background) and where (centre and size as fractions of the side)."""

    color: str
    shape: str
    background: str
    center_x: float = 0.5
    center_y: float = 0.5
    size: float = 0.5

    def __post_init__(self) -> None:
        if self.color not in COLORS or self.background not in COLORS:
            raise ValueError(f"ShapeSpec: color and background must be among {list(COLORS)}, got "
                             f"{self.color!r} on {self.background!r}")
        if self.color == self.background:
            raise ValueError(f"ShapeSpec: the object color must differ from the background, both {self.color!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"ShapeSpec: shape must be one of {list(SHAPES)}, got {self.shape!r}")
        if not 0.0 < self.size <= 1.0:
            raise ValueError(f"ShapeSpec: size is a fraction of the image side in (0, 1], got {self.size!r}")

    @property
    def caption(self) -> str:
        return caption(self.color, self.shape, self.background)


def caption(color: str, shape: str, background: str) -> str:
    return f"a {color} {shape} on a {background} background"


def parse_caption(text: str) -> tuple[str, str, str]:
    """(color, shape, background) of a caption made by `caption`; ValueError for anything else."""
    match = _CAPTION.fullmatch(text.strip())
    if match is None or match.group(1) not in COLORS or match.group(2) not in SHAPES or match.group(3) not in COLORS:
        raise ValueError(f"not a caption of this data set: {text!r} (expected 'a {{color}} {{shape}} on a "
                         f"{{background}} background' with colors {list(COLORS)} and shapes {list(SHAPES)})")
    return match.group(1), match.group(2), match.group(3)


def all_combinations() -> list[tuple[str, str, str]]:
    """Every (color, shape, background) with color != background, in a fixed order."""
    return [(c, s, b) for c in COLORS for s in SHAPES for b in BACKGROUNDS if c != b]


def random_spec(color: str, shape: str, background: str, rng: random.Random) -> ShapeSpec:
    return ShapeSpec(color, shape, background, center_x=0.5 + rng.uniform(-MAX_OFFSET, MAX_OFFSET),
                     center_y=0.5 + rng.uniform(-MAX_OFFSET, MAX_OFFSET), size=rng.uniform(MIN_SIZE, MAX_SIZE))


def render(spec: ShapeSpec, size: int = 64) -> Any:
    """The image of `spec` as a `size` x `size` RGB PIL image (no antialiasing: every pixel is a named color)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), COLORS[spec.background])
    draw = ImageDraw.Draw(image)
    half = spec.size * size / 2
    cx, cy = spec.center_x * size, spec.center_y * size
    box = (round(cx - half), round(cy - half), round(cx + half) - 1, round(cy + half) - 1)
    fill = COLORS[spec.color]
    if spec.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif spec.shape == "square":
        draw.rectangle(box, fill=fill)
    else:  # upright triangle: base at the bottom of the box, apex at the top centre
        x0, y0, x1, y1 = box
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    return image


def generate_dataset(out_dir: str | Path, seed: int = 0, per_combination: int = 4, size: int = 64,
                     progress: bool = False) -> list[dict[str, str]]:
    """Write `per_combination` images of every combination (in a seeded shuffled order) and metadata.jsonl.

    The same seed gives the same files byte for byte. Returns the metadata records.
    """
    if per_combination < 1:
        raise ValueError(f"per_combination must be at least 1, got {per_combination}")
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    combos = [combo for combo in all_combinations() for _ in range(per_combination)]
    rng.shuffle(combos)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    width = len(str(len(combos) - 1))
    records = []
    for number, combo in enumerate(tqdm(combos, desc="shapes", disable=not progress)):
        spec = random_spec(*combo, rng)
        name = f"{number:0{width}d}.png"
        render(spec, size).save(out / name)
        records.append({"file_name": name, "text": spec.caption})
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffblocks.demo_data.shapes", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-combination", type=int, default=4, help="images of each of the 90 combinations")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    args = parser.parse_args(argv)
    records = generate_dataset(args.out_dir, args.seed, args.per_combination, args.size, progress=True)
    print(f"Wrote {len(records)} images and metadata.jsonl to {args.out_dir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
