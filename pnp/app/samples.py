"""Sample source images, drawn in code: the web UI's examples, written at start-up, so no image is committed.

Flat drawings of the kind the paper translates (sketches, silhouettes): a house under the sun and
a still life. With real weights they give a clear test of structure preservation, because each
has a few large shapes whose layout the outputs should keep.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

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


SAMPLES = {"house": house, "still-life": still_life}


def write_samples(folder: str | Path) -> dict[str, Path]:
    """Draw every sample into ``folder`` as ``<name>.png``; returns their paths by name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, draw in SAMPLES.items():
        paths[name] = folder / f"{name}.png"
        draw().save(paths[name])
    return paths
