"""Reading, sizing and converting input images (torch-free; writing outputs is ``pnp.outputs``).

Sizing rule: scale so the short side is ``resolution``, but never let the long side exceed
``MAX_LONG_SIDE`` times ``resolution`` (longer images are shrunk further to fit), then round each
side to the nearest multiple of 64 (at least 64). Images more than ``MAX_ASPECT`` times longer
than wide (or the reverse) are refused. An image already at the resulting size is used as it
is, without resampling.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import ConfigError

MAX_LONG_SIDE = 2  # the long side is at most this many times the requested resolution
MAX_ASPECT = 8  # more extreme strips would lose their short side to the 64-px rounding
SIZE_MULTIPLE = 64


class ImageError(ConfigError):
    """An input image cannot be used; raised as ImageError("image", reason)."""


def load_image(source: str | Path | BinaryIO, name: str | None = None) -> Image.Image:
    """Open an image file as 8-bit RGB: EXIF orientation applied, transparency composited on white.

    Reads anything Pillow reads (PNG, JPEG, WebP, GIF's first frame, ...), in any mode:
    grayscale, palette, RGBA, CMYK, 16-bit. Error messages call the file ``name``, by default
    its path (or the file object's name).
    """
    if name is None:
        name = getattr(source, "name", source)
    try:
        with Image.open(source) as image:
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except FileNotFoundError:
        raise ImageError("image", f"no file at {name}") from None
    except UnidentifiedImageError:
        # Pillow's own message would only repeat the path, which ``name`` may stand in for.
        raise ImageError("image", f"{name} is not a readable image") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError("image", f"{name} is not a readable image ({err})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: Pillow's convert would clip to 0..255 instead of scaling.
        values = np.asarray(image, dtype=np.float64) / 257
        image = Image.fromarray(np.clip(values.round(), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def working_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The (width, height) a (width, height) image is translated at; see the module docstring."""
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageError(
            "image", f"{width}x{height} is more than {MAX_ASPECT} times longer than wide; crop it first"
        )
    scale = min(resolution / min(width, height), MAX_LONG_SIDE * resolution / max(width, height))
    return _round_side(width * scale), _round_side(height * scale)


def resize_for_model(image: Image.Image, resolution: int) -> Image.Image:
    """Resize to ``working_size``, or return the image unchanged when it already has that size."""
    size = working_size(*image.size, resolution)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def _round_side(side: float) -> int:
    # Half-way sizes round up (160 -> 192): Python's round() would round half to even.
    return max(SIZE_MULTIPLE, int(side / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE)
