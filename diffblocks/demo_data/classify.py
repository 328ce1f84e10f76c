"""A model-free classifier of shape images: which named color is the object, which the background, which shape.

1. Background color: the median of the border ring (the outer `border` pixels of each side), named by the
   nearest color of `COLORS` (Euclidean distance in RGB).
2. Object pixels: those nearer the object's color than the background's. The object's color is first estimated
   as the median of the pixels far from the background (more than half the distance between the two closest
   named colors), preferring the centre region; then named by the nearest color other than the background.
3. Shape: the fill ratio of the object pixels in their bounding box (rows and columns holding at least a few
   object pixels, so stray pixels do not stretch it): a square fills ~1.0 of its box, a circle pi/4 ~ 0.785,
   an upright triangle 0.5. Ratios above `SQUARE_ABOVE` are squares, below `TRIANGLE_BELOW` triangles, circles
   in between.

It reads pixels only, so it measures a generated image's adherence to its prompt without any model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .shapes import COLORS, parse_caption

__all__ = ["SQUARE_ABOVE", "TRIANGLE_BELOW", "Classification", "classify_image", "nearest_color", "score"]

SQUARE_ABOVE = 0.89  # between a circle's pi/4 and a square's 1.0
TRIANGLE_BELOW = 0.64  # between a triangle's 0.5 and a circle's pi/4

_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[n] for n in _NAMES], dtype=np.float32)


@dataclass(frozen=True)
class Classification:
    color: str | None  # None when no object pixels were found
    shape: str | None
    background: str
    fill_ratio: float  # object pixels / bounding box area (0 when no object)

    @property
    def caption(self) -> str | None:
        if self.color is None or self.shape is None:
            return None
        return f"a {self.color} {self.shape} on a {self.background} background"


def nearest_color(rgb: Iterable[float], exclude: str | None = None) -> str:
    """The name of the color of `COLORS` nearest `rgb` (Euclidean in RGB), optionally excluding one name."""
    distances = np.linalg.norm(_PALETTE - np.asarray(list(rgb), dtype=np.float32), axis=1)
    if exclude is not None:
        distances[_NAMES.index(exclude)] = np.inf
    return _NAMES[int(np.argmin(distances))]


def _to_array(image: Any) -> np.ndarray:
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"classify_image: expected an RGB image (H x W x 3), got an array of shape {array.shape}")
    return array.astype(np.float32)


def classify_image(image: Any, border: int | None = None, min_line_pixels: int | None = None) -> Classification:
    """Classify a PIL image or an H x W x 3 array (0-255) of one shape on a plain background."""
    pixels = _to_array(image)
    height, width, _ = pixels.shape
    border = border or max(1, min(height, width) // 16)
    ring = np.concatenate([pixels[:border].reshape(-1, 3), pixels[-border:].reshape(-1, 3),
                           pixels[:, :border].reshape(-1, 3), pixels[:, -border:].reshape(-1, 3)])
    background_rgb = np.median(ring, axis=0)
    background = nearest_color(background_rgb)
    # pixels clearly away from the background: half the smallest distance between two named colors
    gaps = np.linalg.norm(_PALETTE[:, None] - _PALETTE[None], axis=2)
    threshold = 0.5 * gaps[gaps > 0].min()
    distance_bg = np.linalg.norm(pixels - background_rgb, axis=2)
    far = distance_bg > threshold
    if not far.any():
        return Classification(None, None, background, 0.0)
    centre = np.zeros_like(far)
    centre[height // 4: height - height // 4, width // 4: width - width // 4] = True
    candidates = pixels[far & centre] if (far & centre).sum() >= 4 else pixels[far]
    object_rgb = np.median(candidates, axis=0)
    color = nearest_color(object_rgb, exclude=background)
    # object mask: nearer the object's color than the background's
    mask = np.linalg.norm(pixels - object_rgb, axis=2) < distance_bg
    min_line = min_line_pixels or max(1, min(height, width) // 32)
    rows = np.flatnonzero(mask.sum(axis=1) >= min_line)
    cols = np.flatnonzero(mask.sum(axis=0) >= min_line)
    if rows.size == 0 or cols.size == 0:
        return Classification(color, None, background, 0.0)
    box = mask[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    ratio = float(box.mean())
    shape = "square" if ratio > SQUARE_ABOVE else "triangle" if ratio < TRIANGLE_BELOW else "circle"
    return Classification(color, shape, background, ratio)


def score(images_and_captions: Iterable[tuple[Any, str]]) -> dict[str, float]:
    """Accuracies over (image, caption) pairs: object color, background color, shape, and all three at once."""
    hits = {"color": 0, "background": 0, "shape": 0, "all": 0}
    total = 0
    for image, text in images_and_captions:
        color, shape, background = parse_caption(text)
        got = classify_image(image)
        right = (got.color == color, got.background == background, got.shape == shape)
        for key, ok in zip(("color", "background", "shape"), right):
            hits[key] += ok
        hits["all"] += all(right)
        total += 1
    if total == 0:
        raise ValueError("score: no images given")
    return {key: value / total for key, value in hits.items()} | {"count": float(total)}
