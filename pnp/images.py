"""Reading, sizing and converting input images (torch-free; writing outputs is ``pnp.outputs``).

Sizing rule: scale so the short side is ``resolution``, but never let the long side exceed
``MAX_LONG_SIDE`` times ``resolution`` (longer images are shrunk further to fit), then round each
side to the nearest multiple of 64 (at least 64). Images more than ``MAX_ASPECT`` times longer
than wide (or the reverse) are refused. An image already at the resulting size is used as it
is, without resampling.

Image size: images of more than ``MAX_PIXELS`` pixels (160 megapixels) are refused from their
header, before any pixel is decoded: decoded, an image takes up to 4 bytes a pixel whatever its
file size (360 KB of PNG can hold 13000x13000 16-bit pixels). The limit is above the largest
camera sensors (151 megapixels) and below the size Pillow itself refuses. Given the resolution,
``load_image`` returns the image at its working size, and shrinks a large one early: JPEGs are
decoded at 1/2, 1/4 or 1/8 scale, other formats averaged by a whole factor (``Image.reduce``)
right after decoding and before any conversion to 8-bit RGB, to no less than ``REDUCING_GAP``
times the working size; a LANCZOS resize finishes. Smaller images are loaded, then resized, as
``resize_for_model`` does.
"""

from __future__ import annotations

import io
import os
import re
import stat
import urllib.error
import urllib.request
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from pnp.config import ConfigError

MAX_LONG_SIDE = 2  # the long side is at most this many times the requested resolution
MAX_ASPECT = 8  # more extreme strips would lose their short side to the 64-px rounding
SIZE_MULTIPLE = 64
# 160 megapixels: above the largest camera sensors (Fujifilm GFX100 and Hasselblad X2D make
# 102 MP photos, Phase One IQ4 151 MP), and far more than the 1024 x 2048 the model sees at most;
# yet a bound on memory, as Pillow holds a decoded image in up to 4 bytes a pixel (RGB, RGBA):
# 640 MB at the limit. It is below 2 * Image.MAX_IMAGE_PIXELS (179 MP), where Pillow refuses
# images itself, so every image Pillow refuses is one we refuse too.
MAX_PIXELS = 160_000_000
# A large image is shrunk early, by whole factors, to no less than this many times its working
# size on each side; a LANCZOS resize with the exact box then finishes. This is Pillow's
# reducing_gap (resize, thumbnail): at 3 "indistinguishable from fair resampling in most cases".
# On synthetic photos with 1-px lines the mean difference from a full-size LANCZOS was 0.4-0.9
# levels of 255 at 3, 0.9-1.8 at 2; memory is the full decode's either way.
REDUCING_GAP = 3
JPEG_DRAFT_SCALES = (8, 4, 2)  # libjpeg decodes at 1/8, 1/4 and 1/2 scale directly
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L")
REDUCE_BAND_ROWS = 256  # converted a band at a time, so no second full-size copy exists
# An image named by URL (a batch manifest's rows) is fetched whole before it is read: at most this
# many bytes (far above any photo's file size, which MAX_PIXELS bounds anyway), within this time.
URL_SCHEMES = ("http://", "https://")
MAX_DOWNLOAD_BYTES = 256 * 2**20
DOWNLOAD_TIMEOUT_S = 60


class ImageError(ConfigError):
    """An input image cannot be used; raised as ImageError("image", reason)."""


def load_image(source: str | Path | BinaryIO, resolution: int | None = None, name: str | None = None) -> Image.Image:
    """Open an image file as 8-bit RGB: EXIF orientation applied, transparency composited on white.

    Reads anything Pillow reads (PNG, JPEG, WebP, GIF's first frame, ...), in any mode:
    grayscale, palette, RGBA, CMYK, 16-bit. Images over ``MAX_PIXELS`` pixels are refused before
    they are decoded. Given the ``resolution`` it will be translated at, the image comes back at
    its working size, as ``resize_for_model`` would make it, and a large one is shrunk while it is
    read (see the module docstring); without, at its own size. Error messages call the file
    ``name``, by default its path (or the file object's name).
    """
    name = _name(source, name)
    with _opened(source, name) as image:
        image.seek(0)
        if resolution is None:
            return _decode(image)
        return _decode_for_model(image, resolution)


def is_url(location: object) -> bool:
    """Whether ``location`` names an image by http(s) URL rather than by path."""
    return isinstance(location, str) and location.lower().startswith(URL_SCHEMES)


def load_image_at(location: str | Path, resolution: int | None = None) -> Image.Image:
    """``load_image`` of a file, or of an http(s) URL's content (fetched first); an ImageError names ``location``."""
    if not is_url(location):
        return load_image(location, resolution)
    return load_image(io.BytesIO(_fetched(location)), resolution, name=location)


def load_mask_at(location: str | Path, param: str = "mask_image") -> Image.Image:
    """``load_mask`` of a file, or of an http(s) URL's content (fetched first, as ``load_image_at`` fetches)."""
    if not is_url(location):
        return load_mask(location, param=param)
    try:
        data = _fetched(location)
    except ImageError as err:
        raise ImageError(param, err.reason) from None
    return load_mask(io.BytesIO(data), name=location, param=param)


def _fetched(location: str) -> bytes:
    """An http(s) URL's content, at most ``MAX_DOWNLOAD_BYTES``; ImageError("image") naming ``location``."""
    try:
        with urllib.request.urlopen(location, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
    except urllib.error.HTTPError as err:
        raise ImageError("image", f"could not fetch {location} (HTTP {err.code} {err.reason})") from None
    except (OSError, ValueError) as err:  # URLError and timeouts are OSErrors
        raise ImageError("image", f"could not fetch {location} ({getattr(err, 'reason', None) or err})") from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise ImageError(
            "image", f"{location} is larger than {MAX_DOWNLOAD_BYTES // 2**20} MB: not an image to translate"
        )
    return data


def load_mask(source: str | Path | BinaryIO, name: str | None = None, param: str = "mask_image") -> Image.Image:
    """Open a mask image file at its own size, EXIF orientation applied, in its own mode: unlike ``load_image``,
    transparency is kept (``pnp.pipelines.inputs.mask_values`` reads transparent as black). Read as safely as
    images, with the same limits; an ImageError names ``param``."""
    try:
        with _opened(source, _name(source, name)) as image:
            image.seek(0)
            image.load()
            return ImageOps.exif_transpose(image)
    except ImageError as err:
        raise ImageError(param, err.reason) from None


def check_image(source: str | Path | BinaryIO, name: str | None = None) -> tuple[int, int]:
    """Check an image file from its header alone: it exists, Pillow reads it, it is neither too large nor too long.

    For checking before the working size is known; returns the (width, height) stored in the
    file. A file whose pixel data is damaged passes, and fails when ``load_image`` decodes it.
    """
    name = _name(source, name)
    with _opened(source, name) as image:
        _check_aspect(*image.size)
        return image.size


def _name(source, name: str | None) -> object:
    return getattr(source, "name", source) if name is None else name


@contextmanager
def _opened(source: str | Path | BinaryIO, name: object):
    """The image opened (its header read and its pixel count checked); every failure as an ImageError naming
    ``name``."""
    try:
        if isinstance(source, (str, os.PathLike)):
            _check_regular_file(source, name)
        with warnings.catch_warnings():
            # Pillow warns from 89 MP up; MAX_PIXELS, checked below, is the limit that applies.
            # (This swaps the process's warning filters while it runs: the command line and the
            # predictor load one image at a time.)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                _check_pixel_count(name, image.size)
                yield image
    except FileNotFoundError:
        raise ImageError("image", f"no file at {name}") from None
    except Image.DecompressionBombError as err:
        # Pillow refused it while reading the header; its message holds the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(err))
        raise ImageError("image", _too_large(name, int(found[1]) if found else None)) from None
    except UnidentifiedImageError:
        # Pillow's own message would only repeat the path, which ``name`` may stand in for.
        raise ImageError("image", f"{name} is not a readable image") from None
    except (OSError, SyntaxError) as err:
        raise ImageError("image", f"{name} is not a readable image ({err})") from None


def _check_regular_file(path: str | os.PathLike, name: object) -> None:
    """Refuse what is not a file of bytes on disk: opening a FIFO waits for a writer for ever, a device never ends."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = (
            "a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device or socket"
        )
        raise ImageError("image", f"{name} is {kind}, not an image file; name an image file")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB."""
    if image.mode in (*SIXTEEN_BIT_MODES, "I"):
        # 16-bit grayscale: Pillow's convert would clip to 0..255 instead of scaling.
        image = Image.fromarray(_sixteen_to_eight_bits(np.asarray(image)), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def working_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The (width, height) a (width, height) image is translated at; see the module docstring."""
    _check_aspect(width, height)
    scale = min(resolution / min(width, height), MAX_LONG_SIDE * resolution / max(width, height))
    return _round_side(width * scale), _round_side(height * scale)


def _check_aspect(width: int, height: int) -> None:
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageError("image", f"{width}x{height} is more than {MAX_ASPECT} times longer than wide; crop it first")


def resize_for_model(image: Image.Image, resolution: int) -> Image.Image:
    """Resize to ``working_size``, or return the image unchanged when it already has that size."""
    size = working_size(*image.size, resolution)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def _round_side(side: float) -> int:
    # Half-way sizes round up (160 -> 192): Python's round() would round half to even.
    return max(SIZE_MULTIPLE, int(side / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE)


def _check_pixel_count(name: object, size: tuple[int, int]) -> None:
    if size[0] * size[1] > MAX_PIXELS:
        raise ImageError("image", _too_large(name, size[0] * size[1], size))


def _too_large(name: object, pixels: int | None, size: tuple[int, int] | None = None) -> str:
    found = f"{pixels / 1e6:.1f} megapixels" if pixels else "too large"
    if size is not None:
        found = f"{size[0]}x{size[1]} pixels ({found})"
    return f"{name} is {found}; the limit is {MAX_PIXELS / 1e6:.0f} megapixels; downscale it first"


def _decode(image: Image.Image) -> Image.Image:
    image.load()
    ImageOps.exif_transpose(image, in_place=True)  # else an upright image is copied whole
    return to_rgb(image)


def _decode_for_model(image: Image.Image, resolution: int) -> Image.Image:
    """The opened ``image`` decoded at its working size, shrunk early by whole factors if large."""
    # In the file's orientation: the working size of the upright image is the same, transposed.
    target = working_size(*image.size, resolution)
    factor = _reduction(image.size, target)
    if factor == 1:
        return resize_for_model(_decode(image), resolution)  # as loading, then resizing, did
    extent = _draft(image, factor)
    image.load()
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    factor = _reduction(extent, target)  # what is left after the JPEG decoder's share
    reduced = to_rgb(_reduce(image, factor))
    # The box is the picture's exact extent: the last row and column of a shrunk image may stand
    # for a partial block, and resizing them as whole pixels would shift edges by up to a pixel.
    box = (0.0, 0.0, extent[0] / factor, extent[1] / factor)
    return _orient(reduced.resize(target, Image.Resampling.LANCZOS, box=box), orientation)


def _reduction(size: tuple[float, float], target: tuple[int, int]) -> int:
    """The largest whole factor that leaves ``size`` at least ``REDUCING_GAP`` times ``target``."""
    return max(1, int(min(side // (REDUCING_GAP * wanted) for side, wanted in zip(size, target))))


def _draft(image: Image.Image, factor: int) -> tuple[float, float]:
    """Let a JPEG decode at 1/8, 1/4 or 1/2 scale, no smaller than 1/``factor``.

    Returns the picture's extent in the pixels that will be decoded: its size divided by the
    scale (draft() is a no-op for other formats).
    """
    scale = next((scale for scale in JPEG_DRAFT_SCALES if scale <= factor), 1)
    if scale == 1:
        return image.size
    # draft takes the largest scale that leaves at least the size asked for: exactly ``scale``.
    drafted = image.draft(None, (image.width // scale, image.height // scale))
    return drafted[1][2:] if drafted else image.size


def _orient(image: Image.Image, orientation: int) -> Image.Image:
    # exif_transpose reads the orientation from the image's own EXIF, which a copy shrunk band by
    # band does not carry; so hand it the file's. (Pillow applies a TIFF's as it loads it.)
    image.getexif()[ExifTags.Base.Orientation] = orientation
    ImageOps.exif_transpose(image, in_place=True)
    return image


def _reduce(image: Image.Image, factor: int) -> Image.Image:
    """``image`` shrunk ``factor`` times by averaging, converted a band at a time where needed."""
    if factor == 1:
        return image
    mode = _reduce_mode(image.mode)
    if mode is None:
        return image.reduce(factor)
    width, height = image.size
    reduced = Image.new(mode, (-(-width // factor), -(-height // factor)))
    rows = factor * max(1, REDUCE_BAND_ROWS // factor)  # whole blocks, as in one reduce
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(top + rows, height)))
        if mode == "RGBa" and band.mode != "RGBA":
            band = band.convert("RGBA")  # palette and LA reach RGBa through RGBA
        reduced.paste(band.convert(mode).reduce(factor), (0, top // factor))
    return reduced


def _reduce_mode(mode: str) -> str | None:
    """The mode ``mode`` is averaged in, or None where Image.reduce averages it as it is."""
    # Alpha premultiplied, so the colour of transparent pixels does not bleed into visible
    # ones; palette entries as colours rather than indices; 16-bit values in 32 bits.
    if mode in ("RGBA", "LA", "P", "PA"):
        return "RGBa"
    if mode in SIXTEEN_BIT_MODES:
        return "I"
    return "L" if mode == "1" else None


def _sixteen_to_eight_bits(values: np.ndarray) -> np.ndarray:
    """round(v / 257) clipped to 0..255, computed in integers: float64 takes 4 times the memory."""
    if values.dtype.itemsize > 2:  # mode "I" is 32-bit and signed
        values = np.clip(values, 0, 65535)
    quotient, remainder = np.divmod(values, 257)
    # v / 257 is never half-way (257 is odd), so rounding up from 129 is round() exactly.
    quotient += remainder > 128
    return quotient.astype(np.uint8)
