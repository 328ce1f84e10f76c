"""The procedural captioned data set the bundled demo model is trained on, and a model-free classifier of images
of it (used to measure how well generated images follow their prompt).

Images: one object (circle, square or upright triangle) of one color on a plain background of another color,
captioned ``"a {color} {shape} on a {background} background"``.
"""

from .classify import Classification, classify_image, score
from .shapes import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    ShapeSpec,
    all_combinations,
    caption,
    generate_dataset,
    parse_caption,
    render,
)

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "SHAPES",
    "Classification",
    "ShapeSpec",
    "all_combinations",
    "caption",
    "classify_image",
    "generate_dataset",
    "parse_caption",
    "render",
    "score",
]
