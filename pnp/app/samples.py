"""The web UI's examples: sample source images drawn in code (written at start-up, so no image is committed), each
with its target prompts, and a generation example.

For Stable Diffusion models: flat drawings of the kind the paper translates (sketches,
silhouettes), a house under the sun and a still life; each has a few large shapes whose layout
the outputs should keep. For the toy model: scenes of its own world, since it knows nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from pnp.pipelines.loading import TOY_MODEL
from pnp.toy.world import Scene, Shape, render

SIZE = (512, 384)


def house() -> Image.Image:
    """A house with a red roof, a door and two windows on a lawn, under a blue sky with a yellow sun."""
    width, height = SIZE
    image = Image.new("RGB", SIZE, (135, 190, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 280, width, height), fill=(90, 160, 70))
    draw.ellipse((400, 30, 470, 100), fill=(250, 210, 60))
    draw.rectangle((150, 180, 350, 310), fill=(230, 215, 180))
    draw.polygon([(130, 185), (250, 90), (370, 185)], fill=(180, 50, 40))
    draw.rectangle((230, 235, 270, 310), fill=(110, 70, 40))
    for left in (170, 295):
        draw.rectangle((left, 205, left + 35, 240), fill=(180, 220, 245), outline=(60, 60, 60), width=3)
    return image


def still_life() -> Image.Image:
    """A red apple and a blue cup on a brown table against a pale wall."""
    width, height = SIZE
    image = Image.new("RGB", SIZE, (235, 225, 205))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 250, width, height), fill=(140, 90, 50))
    draw.ellipse((90, 160, 220, 285), fill=(200, 30, 35))
    draw.line((155, 165, 165, 130), fill=(80, 50, 20), width=6)
    draw.rectangle((300, 150, 400, 280), fill=(40, 80, 170))
    draw.arc((375, 175, 435, 245), start=-90, end=90, fill=(40, 80, 170), width=12)
    return image


def _toy_scene(*shapes: Shape) -> Callable[[], Image.Image]:
    return lambda: render(Scene(shapes)).image


@dataclass(frozen=True)
class Examples:
    """What the page offers to try: sample images by name (drawn when called) with each one's target prompts (one
    per line), and a generation example (generation prompt, target prompt, seed)."""

    samples: dict[str, Callable[[], Image.Image]]
    prompts: dict[str, str]
    generation: tuple[str, str, int]


PHOTO_EXAMPLES = Examples(
    samples={"house": house, "still-life": still_life},
    prompts={
        "house": "a photo of a wooden cabin in a snowy forest\na watercolor painting of a cottage",
        "still-life": "a photo of an orange and a glass of milk on a marble table",
    },
    generation=("a photo of a lighthouse on a cliff", "a lighthouse at night, oil painting", 1),
)
TOY_EXAMPLES = Examples(
    # Colour changes: what the toy model does well (docs/toy.md); its shape changes mostly fail.
    samples={
        "yellow-square": _toy_scene(Shape("square", "yellow", 0.4, 0.4, 0.3)),
        "blue-triangle": _toy_scene(Shape("triangle", "blue", 0.55, 0.55, 0.4)),
    },
    prompts={"yellow-square": "a blue square\na red square", "blue-triangle": "a red triangle\na green triangle"},
    generation=("a red square", "a blue square", 2),
)


def examples_for(model: str) -> Examples:
    """The toy model's own world for the toy model; drawings for Stable Diffusion models (and random-weight ones)."""
    return TOY_EXAMPLES if model == TOY_MODEL else PHOTO_EXAMPLES


def write_samples(folder: str | Path, examples: Examples = PHOTO_EXAMPLES) -> dict[str, Path]:
    """Draw every sample of ``examples`` into ``folder`` as ``<name>.png``; returns their paths by name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, draw in examples.samples.items():
        paths[name] = folder / f"{name}.png"
        draw().save(paths[name])
    return paths
