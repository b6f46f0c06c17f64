"""Reading an image of the toy world: where the shapes are, their colours and their classes.

The quality judge of the toy model's tests and figures (no learned metric). Each pixel takes its
nearest palette colour (``pnp.toy.world``: shape colours and background colours are disjoint);
pixels nearest a shape colour form the shape mask; its connected regions (of at least
``MIN_AREA`` of the image) are the shapes. A shape's colour is its pixels' majority colour, its
class the ideal shape (circle, square or upright triangle) drawn in its bounding box that overlaps
it best (after a 3x3 majority filter, so that a ragged edge does not stretch the box).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pnp.toy.world import BACKGROUND_COLOURS, SHAPE_COLOURS, SHAPES

MIN_AREA = 0.004  # smallest region that counts as a shape, as a fraction of the image (65 px at 128 px)
_PALETTE_NAMES = (*SHAPE_COLOURS, *BACKGROUND_COLOURS)
_PALETTE = np.array([*SHAPE_COLOURS.values(), *BACKGROUND_COLOURS.values()], np.float32)


@dataclass(frozen=True)
class ShapeReading:
    """One shape found in an image: its (H, W) bool mask, colour name and class."""

    mask: np.ndarray
    colour: str
    kind: str

    @property
    def centre(self) -> tuple[float, float]:
        """(x, y) of the mask's centroid in pixels."""
        y, x = np.nonzero(self.mask)
        return float(x.mean()), float(y.mean())


@dataclass(frozen=True)
class Reading:
    """What an image shows: its shapes, largest first (``shapes[0]`` is the main one), and every shape pixel."""

    shapes: tuple[ShapeReading, ...]
    mask: np.ndarray

    @property
    def main(self) -> ShapeReading | None:
        """The largest shape, or None if the image shows none."""
        return self.shapes[0] if self.shapes else None

    def left_to_right(self, count: int = 2) -> tuple[ShapeReading, ...]:
        """The ``count`` largest shapes in caption order (left to right)."""
        return tuple(sorted(self.shapes[:count], key=lambda s: s.centre[0]))


def read(image: Image.Image | np.ndarray) -> Reading:
    """Read ``image`` (PIL, or an (H, W, 3) uint8 array, or floats in [0, 1])."""
    pixels = _pixels(image)
    nearest = palette_indices(pixels)
    shape_pixels = nearest < len(SHAPE_COLOURS)
    labels = connected_regions(shape_pixels)
    regions = [labels == label for label in np.unique(labels[labels > 0])]
    min_pixels = MIN_AREA * shape_pixels.size
    regions = sorted((r for r in regions if r.sum() >= min_pixels), key=lambda r: -int(r.sum()))
    shapes = tuple(ShapeReading(r, _majority_colour(nearest[r]), shape_class(_smoothed(r))) for r in regions)
    mask = np.logical_or.reduce([s.mask for s in shapes]) if shapes else np.zeros(shape_pixels.shape, bool)
    return Reading(shapes, mask)


@dataclass(frozen=True)
class Judgement:
    """An image against what it should show: whether its main shape has the colour and the class, and the IoU of
    its shape pixels with a reference mask."""

    colour: bool
    shape: bool
    iou: float


def judge_image(image: Image.Image | np.ndarray, colour: str, kind: str, reference: np.ndarray) -> Judgement:
    """Read ``image`` and judge its main shape against ``colour`` and ``kind``, its shape pixels against
    ``reference`` (a bool mask of the image's size)."""
    reading = read(image)
    main = reading.main
    return Judgement(
        colour=main is not None and main.colour == colour,
        shape=main is not None and main.kind == kind,
        iou=mask_iou(reading.mask, reference),
    )


def palette_indices(pixels: np.ndarray) -> np.ndarray:
    """(H, W) index of each pixel's nearest palette colour: shape colours first, then backgrounds."""
    distances = ((pixels[..., None, :] - _PALETTE) ** 2).sum(-1)
    return distances.argmin(-1)


def connected_regions(mask: np.ndarray) -> np.ndarray:
    """(H, W) int labels of the 4-connected regions of ``mask`` (0 outside it), without scipy.

    Each row's runs of mask pixels are joined (union-find) with the runs they touch in the row above.
    """
    runs = []  # (row, start, end) of every run, row by row
    for row, line in enumerate(mask):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], line.astype(np.int8), [0]])))
        runs += [(row, int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
    parent = list(range(len(runs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    above, current, row_of_current = [], [], -1
    for index, (row, start, end) in enumerate(runs):
        if row != row_of_current:
            above = current if row == row_of_current + 1 else []
            current, row_of_current = [], row
        for other in above:
            if runs[other][1] < end and start < runs[other][2]:
                parent[root(index)] = root(other)
        current.append(index)
    labels = np.zeros(mask.shape, np.int32)
    for index, (row, start, end) in enumerate(runs):
        labels[row, start:end] = root(index) + 1
    return labels


def shape_class(mask: np.ndarray) -> str:
    """The class whose ideal shape, drawn in the mask's bounding box, overlaps the mask best (highest IoU)."""
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = mask[top:bottom, left:right]
    h, w = box.shape
    # Ideal shapes in a unit square stretched to the box, sampled at pixel centres.
    y, x = (np.mgrid[0:h, 0:w] + 0.5) / np.array([h, w])[:, None, None]
    scores = {kind: mask_iou(box, _ideal(kind, x, y)) for kind in SHAPES}
    return max(scores, key=scores.get)


def _ideal(kind: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if kind == "circle":
        return (x - 0.5) ** 2 + (y - 0.5) ** 2 <= 0.25
    if kind == "square":
        return np.ones_like(x, bool)
    return abs(x - 0.5) <= y / 2


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _smoothed(mask: np.ndarray) -> np.ndarray:
    """``mask`` where at least 5 of each pixel's 3x3 neighbourhood are set: ragged or noisy edges made smooth, so
    that they do not stretch the bounding box the class is read in."""
    padded = np.pad(mask, 1).astype(np.int8)
    h, w = mask.shape
    counts = sum(padded[i : i + h, j : j + w] for i in range(3) for j in range(3))
    smoothed = counts >= 5
    return smoothed if smoothed.any() else mask


def _majority_colour(indices: np.ndarray) -> str:
    counts = np.bincount(indices, minlength=len(SHAPE_COLOURS))[: len(SHAPE_COLOURS)]
    return _PALETTE_NAMES[int(counts.argmax())]


def _pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 RGB in 0-255."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), np.float32)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image: expected (H, W, 3) pixels, got shape {array.shape}")
    return array.astype(np.float32) * (255.0 if array.dtype.kind == "f" else 1.0)
