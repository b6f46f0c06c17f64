"""A labelled grid of equally sized images: a title, a label above each column and beside each row (torch-free)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

FONT_SIZE = 13
LABEL_WIDTH = 150  # pixels left of the tiles for the row labels
GAP = 2  # pixels between tiles
MARGIN = 6
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def labelled_grid(
    tiles: Sequence[Sequence[Image.Image]], row_labels: Sequence[str], column_labels: Sequence[str], title: str
) -> Image.Image:
    """One image: ``title`` on top, then one row of ``tiles`` per row label, one column per column label.

    Every tile must have the same size. Row labels are wrapped to the label column's width.
    """
    width, height = tiles[0][0].size
    font = _font()
    line = FONT_SIZE + 4
    top = MARGIN + line + line  # the title, then the column labels
    columns = len(column_labels)
    grid = Image.new(
        "RGB",
        (LABEL_WIDTH + columns * (width + GAP) + MARGIN, top + len(row_labels) * (height + GAP) + MARGIN),
        BACKGROUND,
    )
    draw = ImageDraw.Draw(grid)
    draw.text((MARGIN, MARGIN), title, fill=INK, font=font)
    for c, label in enumerate(column_labels):
        draw.text((LABEL_WIDTH + c * (width + GAP), MARGIN + line), label, fill=INK, font=font)
    wrap = max(8, (LABEL_WIDTH - 2 * MARGIN) * 2 // FONT_SIZE)  # characters are about half as wide as tall
    for r, (label, row) in enumerate(zip(row_labels, tiles, strict=True)):
        y = top + r * (height + GAP)
        text = "\n".join(textwrap.wrap(label, wrap)[: max(1, height // line)])
        draw.multiline_text((MARGIN, y), text, fill=INK, font=font, spacing=4)
        for c, tile in enumerate(row):
            if tile.size != (width, height):
                raise ValueError(f"tile {r},{c} is {tile.size[0]}x{tile.size[1]}, not {width}x{height} like the others")
            grid.paste(tile.convert("RGB"), (LABEL_WIDTH + c * (width + GAP), y))
    return grid


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except ImportError:  # Pillow without FreeType: its fixed-size bitmap font
        return ImageFont.load_default()
