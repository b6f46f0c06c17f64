"""The toy world: one or two flat-coloured shapes on a plain or two-tone background, with a caption.

A ``Scene`` is a description (shapes, colours, positions, sizes, background) in fractions of the
image side, so it renders at any size; ``render`` draws it deterministically with numpy (pixel
centres inside a shape take its colour, no anti-aliasing) and returns each shape's exact mask.
``random_scene`` draws a scene from a seed. The toy model (``pnp.toy.model``) is trained on these
images and captions, and ``pnp.toy.scorer`` reads any image of this world back.

Shape colours and background colours are disjoint palettes, so a pixel's nearest palette colour
says whether it belongs to a shape; shapes never touch each other or the image border, so every
shape is its own connected region.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle")
# Saturated shape colours and neutral backgrounds, far apart in RGB (the closest pair, gray and
# green, is 136 apart), so that a blurred or noisy pixel still has an unambiguous nearest colour.
SHAPE_COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (240, 220, 30)}
BACKGROUND_COLOURS = {"white": (245, 245, 245), "gray": (130, 130, 130), "black": (15, 15, 15)}
# The background a caption leaves unnamed ("a red circle" is on white).
DEFAULT_BACKGROUND = "white"
# Every word a caption uses, for the toy model's tokenizer.
VOCABULARY = ("a", "and", "on", "background", *SHAPES, *SHAPE_COLOURS, *BACKGROUND_COLOURS)
SIZE = 128  # the toy model's own image side in pixels

# Shape extents (diameter, side, triangle base and height) as fractions of the image side.
_ONE_SHAPE_EXTENT = (0.25, 0.5)
_TWO_SHAPE_EXTENT = (0.22, 0.36)
_MARGIN = 0.04  # smallest gap between a shape and the border or another shape


def summary() -> str:
    """The world in words, for users of the toy model."""
    shapes = _listed([s + "s" for s in SHAPES], "or")
    colours = _listed(list(SHAPE_COLOURS), "or")
    backgrounds = _listed(list(BACKGROUND_COLOURS), "or")
    return (
        f"one or two {shapes} in {colours}, on {backgrounds} backgrounds, plain or two-tone (plain white unless "
        'the caption names one); captions such as "a red circle" or "a blue square and a yellow triangle on a '
        'gray background"'
    )


def _listed(words: list[str], last: str) -> str:
    return f"{', '.join(words[:-1])} {last} {words[-1]}"


@dataclass(frozen=True)
class Shape:
    """One shape: its class, colour name, centre (x, y) and extent, all in fractions of the image side."""

    kind: str
    colour: str
    x: float
    y: float
    extent: float

    def __post_init__(self):
        if self.kind not in SHAPES:
            raise ValueError(f"shape: {self.kind!r} is not one of {', '.join(SHAPES)}")
        if self.colour not in SHAPE_COLOURS:
            raise ValueError(f"shape colour: {self.colour!r} is not one of {', '.join(SHAPE_COLOURS)}")

    @property
    def name(self) -> str:
        """The shape as a caption names it: "red circle"."""
        return f"{self.colour} {self.kind}"

    def mask(self, size: int) -> np.ndarray:
        """(size, size) bool: the pixels whose centres lie inside the shape."""
        y, x = (np.mgrid[0:size, 0:size] + 0.5) / size
        half = self.extent / 2
        if self.kind == "circle":
            return (x - self.x) ** 2 + (y - self.y) ** 2 <= half**2
        if self.kind == "square":
            return (abs(x - self.x) <= half) & (abs(y - self.y) <= half)
        # An upright triangle: apex at the top centre, base at the bottom, as wide as it is high.
        depth = y - (self.y - half)
        return (depth >= 0) & (depth <= self.extent) & (abs(x - self.x) <= depth / 2)


@dataclass(frozen=True)
class Scene:
    """Shapes (left to right, as the caption names them) on a background of one or two colours.

    A two-tone background is split at ``split`` (a fraction of the side) into ``background[0]``
    (top, or left if ``vertical``) and ``background[1]``.
    """

    shapes: tuple[Shape, ...]
    background: tuple[str, ...] = (DEFAULT_BACKGROUND,)
    split: float = 0.5
    vertical: bool = False
    name_background: bool = field(default=False)  # name a plain white background in the caption anyway

    def __post_init__(self):
        if not 1 <= len(self.shapes) <= 2:
            raise ValueError(f"scene: {len(self.shapes)} shapes; a scene has one or two")
        if not 1 <= len(self.background) <= 2 or any(c not in BACKGROUND_COLOURS for c in self.background):
            raise ValueError(f"background: {self.background!r} must be one or two of {', '.join(BACKGROUND_COLOURS)}")

    @property
    def caption(self) -> str:
        """E.g. "a red circle", "a red circle and a blue square on a gray background", "... on a white and black
        background"."""
        text = " and ".join(f"a {shape.name}" for shape in self.shapes)
        if self.background != (DEFAULT_BACKGROUND,) or self.name_background:
            text += f" on a {' and '.join(self.background)} background"
        return text

    def replace_shape(self, index: int, **changes) -> Scene:
        """This scene with shape ``index`` changed (``kind``, ``colour``, ...): what a translation should make."""
        shapes = list(self.shapes)
        shapes[index] = Shape(**{**shapes[index].__dict__, **changes})
        return Scene(tuple(shapes), self.background, self.split, self.vertical, self.name_background)


@dataclass(frozen=True)
class Rendered:
    """A rendered scene: the RGB image and each shape's exact (size, size) bool mask, in the scene's order."""

    scene: Scene
    image: Image.Image
    masks: tuple[np.ndarray, ...]

    @property
    def mask(self) -> np.ndarray:
        """Every shape's pixels."""
        return np.logical_or.reduce(self.masks)


def render(scene: Scene, size: int = SIZE) -> Rendered:
    """Draw ``scene`` at ``size`` x ``size`` pixels: the same scene always gives the same pixels."""
    pixels = np.empty((size, size, 3), np.uint8)
    pixels[:] = BACKGROUND_COLOURS[scene.background[0]]
    if len(scene.background) == 2:
        cut = int(round(scene.split * size))
        second = (slice(None), slice(cut, None)) if scene.vertical else (slice(cut, None), slice(None))
        pixels[second] = BACKGROUND_COLOURS[scene.background[1]]
    masks = tuple(shape.mask(size) for shape in scene.shapes)
    for shape, mask in zip(scene.shapes, masks):
        pixels[mask] = SHAPE_COLOURS[shape.colour]
    return Rendered(scene, Image.fromarray(pixels, "RGB"), masks)


@dataclass(frozen=True)
class Caption:
    """What a caption says: each shape's (colour, kind), left to right, and the background's colours."""

    shapes: tuple[tuple[str, str], ...]
    background: tuple[str, ...] = (DEFAULT_BACKGROUND,)


def _one_of(names) -> str:
    return "(" + "|".join(names) + ")"


_SHAPE_WORDS = f"a {_one_of(SHAPE_COLOURS)} {_one_of(SHAPES)}"
_BACKGROUND_WORDS = _one_of(BACKGROUND_COLOURS)
_CAPTION = re.compile(
    f"{_SHAPE_WORDS}(?: and {_SHAPE_WORDS})?(?: on a {_BACKGROUND_WORDS}(?: and {_BACKGROUND_WORDS})? background)?"
)


def parse_caption(text: str) -> Caption | None:
    """What ``text`` says if it is a caption as ``Scene.caption`` writes them ("a red circle", "... on a gray
    background"), else None."""
    match = _CAPTION.fullmatch(text)
    if match is None:
        return None
    colour, kind, *rest = match.groups()
    shapes = ((colour, kind),) if rest[0] is None else ((colour, kind), (rest[0], rest[1]))
    background = tuple(c for c in rest[2:] if c is not None) or (DEFAULT_BACKGROUND,)
    return Caption(shapes, background)


def random_scene(seed: int | np.random.Generator, shapes: int | None = None, background: str | None = None) -> Scene:
    """A scene drawn from ``seed``: one shape (two thirds of scenes) or two, random classes, colours, places and
    sizes; the background is plain white half the time, else another plain colour or two tones.

    ``shapes`` (1 or 2) and ``background`` ("plain": always the unnamed white; "any": the mix above)
    fix what they name.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    count = shapes or (1 if rng.random() < 2 / 3 else 2)
    placed = _place(rng, count)
    kinds = rng.choice(SHAPES, count)
    colours = rng.choice(list(SHAPE_COLOURS), count)
    drawn = tuple(Shape(str(k), str(c), x, y, e) for k, c, (x, y, e) in zip(kinds, colours, placed))
    if background == "plain":
        return Scene(drawn)
    choice = rng.random()
    if choice < 0.5:
        return Scene(drawn, name_background=bool(rng.random() < 0.2))
    if choice < 0.75:
        return Scene(drawn, (str(rng.choice(["gray", "black"])),))
    pair = tuple(str(c) for c in rng.choice(list(BACKGROUND_COLOURS), 2, replace=False))
    return Scene(drawn, pair, split=float(rng.uniform(0.3, 0.7)), vertical=bool(rng.random() < 0.5))


def _place(rng: np.random.Generator, count: int) -> list[tuple[float, float, float]]:
    """(x, y, extent) of ``count`` shapes inside the image and apart from each other, sorted left to right."""
    low, high = _ONE_SHAPE_EXTENT if count == 1 else _TWO_SHAPE_EXTENT
    while True:
        placed = []
        for _ in range(count):
            extent = rng.uniform(low, high)
            lo, hi = extent / 2 + _MARGIN, 1 - extent / 2 - _MARGIN
            placed.append((rng.uniform(lo, hi), rng.uniform(lo, hi), extent))
        if count == 1 or _apart(*placed):
            return sorted(placed)


def _apart(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """Whether two shapes' bounding squares are at least the margin apart (horizontally or vertically) and
    their centres far enough apart left to right that "left to right" is clear."""
    gap = (a[2] + b[2]) / 2 + _MARGIN
    return (abs(a[0] - b[0]) >= gap or abs(a[1] - b[1]) >= gap) and abs(a[0] - b[0]) >= 0.1
