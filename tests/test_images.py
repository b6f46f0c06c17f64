"""Reading every common format and mode, and the sizing rule."""

import io
import json
import math
import os
import re
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from pnp import images
from pnp.images import MAX_PIXELS, ImageError, load_image, resize_for_model, to_rgb, working_size


def _saved(tmp_path, image, name, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


def test_png_jpeg_webp_load_as_rgb(tmp_path):
    image = Image.new("RGB", (40, 30), (200, 100, 50))
    for name in ("a.png", "a.jpg", "a.webp"):
        loaded = load_image(_saved(tmp_path, image, name))
        assert loaded.mode == "RGB" and loaded.size == (40, 30)
        assert np.abs(np.asarray(loaded, dtype=int)[15, 20] - (200, 100, 50)).max() <= 4


def test_jpeg_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 30), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 30))  # white strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    loaded = load_image(_saved(tmp_path, image, "rotated.jpg", exif=exif))
    assert loaded.size == (30, 40)
    pixels = np.asarray(loaded, dtype=int)
    assert pixels[2, 15].min() > 200 and pixels[-2, 15].max() < 60  # the strip is now on top


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    pixels = np.asarray(load_image(path), dtype=int)
    assert pixels[10, 10, 0] > 200 and pixels[10, 10, 2] < 50


def test_grayscale_palette_cmyk(tmp_path):
    gray = load_image(_saved(tmp_path, Image.new("L", (10, 10), 77), "g.png"))
    assert gray.mode == "RGB" and gray.getpixel((5, 5)) == (77, 77, 77)
    palette = Image.new("RGB", (10, 10), (10, 200, 30)).convert("P")
    assert load_image(_saved(tmp_path, palette, "p.png")).getpixel((5, 5)) == palette.convert("RGB").getpixel((5, 5))
    cmyk = load_image(_saved(tmp_path, Image.new("CMYK", (10, 10), (0, 255, 255, 0)), "c.jpg"))
    r, g, b = cmyk.getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    loaded = load_image(_saved(tmp_path, rgba, "t.png"))
    assert loaded.getpixel((5, 5)) == (255, 255, 255)
    assert loaded.getpixel((0, 0)) == (255, 0, 0)
    assert 120 <= loaded.getpixel((1, 0))[0] <= 135
    transparent_palette = Image.new("P", (4, 4), 0)
    transparent_palette.putpalette([0, 0, 0, 255, 0, 0])
    transparent_palette.info["transparency"] = 0
    assert load_image(_saved(tmp_path, transparent_palette, "tp.png")).getpixel((1, 1)) == (255, 255, 255)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    loaded = np.asarray(load_image(path))[0, :, 0]
    assert loaded.tolist() == [0, 128, 255]


def test_unreadable_files_give_clear_errors(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(text)
    with pytest.raises(ImageError, match="no file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(io.BytesIO(b"\x89PNG\r\n\x1a\n broken"))


@pytest.mark.parametrize(
    "size,resolution,expected",
    [
        ((512, 512), 512, (512, 512)),
        ((1024, 768), 512, (704, 512)),  # 682.7 rounds to 704
        ((480, 640), 512, (512, 704)),
        ((3000, 2000), 256, (384, 256)),
        ((100, 60), 128, (192, 128)),  # small images are enlarged
        ((4000, 1000), 512, (1024, 256)),  # long side capped at twice the resolution
        ((800, 100), 128, (256, 64)),
        ((160, 128), 128, (192, 128)),  # half-way rounds up
    ],
)
def test_working_size(size, resolution, expected):
    width, height = working_size(*size, resolution)
    assert (width, height) == expected
    assert width % 64 == 0 and height % 64 == 0


def test_absurd_aspect_ratios_are_refused():
    with pytest.raises(ImageError, match="crop it first"):
        working_size(1000, 100, 512)


def test_an_image_at_a_valid_size_is_not_resampled():
    image = Image.new("RGB", (512, 768))
    assert resize_for_model(image, 512) is image
    resized = resize_for_model(Image.new("RGB", (1000, 700)), 512)
    assert resized.size == (704, 512)


# Size limit, 16-bit conversion and early shrinking.


def _png_claiming(tmp_path, width, height):
    """A 1x1 grayscale PNG whose header claims width x height: tiny, and truncated past it."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    # IHDR's width and height follow the 8-byte signature and the chunk's length and type.
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(data[12:29]))
    path = tmp_path / f"claims-{width}x{height}.png"
    path.write_bytes(data)
    return path


def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path):
    # 169 MP: over MAX_PIXELS, under the 179 MP where Pillow refuses by itself. Decoding would
    # fail on the missing pixel data with another message, so this one comes from the header.
    path = _png_claiming(tmp_path, 13000, 13000)
    expected = "is 13000x13000 pixels (169.0 megapixels); the limit is 160 megapixels; downscale it first"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning does not get out either
        for resolution in (None, 512):
            with pytest.raises(ImageError, match=re.escape(expected)):
                load_image(path, resolution)


def test_images_pillow_refuses_get_the_same_message(tmp_path):
    with pytest.raises(ImageError) as refused:
        load_image(_png_claiming(tmp_path, 20000, 20000))
    message = str(refused.value)
    assert message.endswith("is 400.0 megapixels; the limit is 160 megapixels; downscale it first")
    assert message.startswith("image: ") and "bomb" not in message


def test_images_at_the_limit_are_decoded_without_pillows_warning(tmp_path):
    side = math.isqrt(MAX_PIXELS)  # 12649 x 12649: under the limit, over Pillow's 89 MP warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match="not a readable image"):  # decoding was tried
            load_image(_png_claiming(tmp_path, side, side))


def test_sixteen_bit_values_are_round_v_over_257(tmp_path):
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # every 16-bit value
    path = tmp_path / "every.png"
    Image.fromarray(values).save(path)
    before = np.clip(np.round(values / 257), 0, 255)  # the float64 formula this loader used
    assert np.array_equal(np.asarray(load_image(path))[..., 0], before)
    wide = np.array([[-70000, -1, 0, 128, 129, 65535, 65536, 2**31 - 1]], dtype=np.int32)
    converted = np.asarray(to_rgb(Image.fromarray(wide)))[0, :, 0]  # mode "I": clipped
    assert converted.tolist() == np.clip(np.round(wide / 257), 0, 255)[0].tolist()


def _photo(width, height, seed=0):
    """A photo-like RGB image: smooth noise, a sharp-edged block, 1-px lines and grain."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8))
    pixels = np.array(coarse.resize((width, height), Image.Resampling.BICUBIC))
    pixels[height // 3 : height // 2, width // 4 : width // 2] = (250, 20, 20)
    pixels[:, ::97] = 255
    pixels ^= rng.integers(0, 24, pixels.shape, dtype=np.uint8)
    return Image.fromarray(pixels)


def _record_shrinking(monkeypatch):
    """Record the factors of Image.reduce and the sizes JPEG.draft sets."""
    calls = []
    reduce, draft = Image.Image.reduce, JpegImagePlugin.JpegImageFile.draft

    def reduce_and_record(image, factor, box=None):
        calls.append(("reduce", factor))
        return reduce(image, factor, box)

    def draft_and_record(image, mode, size):
        result = draft(image, mode, size)
        calls.append(("draft", image.size))
        return result

    monkeypatch.setattr(Image.Image, "reduce", reduce_and_record)
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft_and_record)
    return calls


@pytest.mark.parametrize(
    "name,shrinking",
    [
        ("big.png", [("reduce", 4)]),  # 1603 / 4 >= 3 * 128 > 1603 / 5
        ("big.jpg", [("draft", (601, 401))]),  # at 1/4 scale, and no reduce after
    ],
)
def test_large_images_are_shrunk_early_yet_match_a_full_size_resize(tmp_path, monkeypatch, name, shrinking):
    # Odd sizes: the last shrunk row and column stand for partial blocks.
    path = _saved(tmp_path, _photo(2401, 1603), name)
    full = resize_for_model(load_image(path), 128)
    calls = _record_shrinking(monkeypatch)
    early = load_image(path, 128)
    assert calls == shrinking
    assert early.size == full.size == (192, 128) and early.mode == "RGB"
    assert resize_for_model(early, 128) is early
    difference = np.abs(np.asarray(early, dtype=int) - np.asarray(full, dtype=int))
    # Averaging blocks, or libjpeg's scaled decode, then LANCZOS is not one LANCZOS: on this
    # image (1-px lines, sharp edges, grain) that is under a level of 255 on average and a few
    # levels at the 99th percentile. Shifted edges (resizing the partial blocks as whole pixels)
    # or shrinking below the gap give 2 to 8 times as much.
    assert difference.mean() < 1.2 and np.percentile(difference, 99) <= 5


@pytest.mark.parametrize("name", ["a.png", "a.jpg", "a.webp"])
def test_images_that_need_no_shrinking_load_exactly_as_before(tmp_path, monkeypatch, name):
    # 767 px: one short of 2 * REDUCING_GAP * 128, the smallest side shrunk (by 2) at 128.
    path = _saved(tmp_path, _photo(767, 767), name)
    before = resize_for_model(load_image(path), 128)
    calls = _record_shrinking(monkeypatch)
    assert np.array_equal(np.asarray(load_image(path, 128)), np.asarray(before))
    assert calls == []
    assert load_image(_saved(tmp_path, _photo(768, 768), "b.png"), 128).size == (128, 128)
    assert calls == [("reduce", 2)]


@pytest.mark.parametrize("name,mode", [("o.jpg", "RGB"), ("o.png", "RGB"), ("o.png", "RGBA"), ("o.tif", "RGB")])
@pytest.mark.parametrize("orientation,strip", [(6, "top"), (2, "right"), (8, "bottom")])
def test_exif_orientation_is_applied_after_shrinking(tmp_path, name, mode, orientation, strip):
    image = Image.new(mode, (2400, 1600), "black")
    image.paste("white", (0, 0, 400, 1600))  # a white strip on the left, as stored
    exif = Image.Exif()
    exif[0x0112] = orientation  # RGBA is shrunk band by band, into an image without the EXIF
    loaded = load_image(_saved(tmp_path, image, name, exif=exif), 128)
    assert loaded.size == ((128, 192) if orientation in (6, 8) else (192, 128))
    pixels = np.asarray(loaded, dtype=int).mean(axis=2)
    edges = {"top": pixels[:8], "bottom": pixels[-8:]}
    edges.update(left=pixels[:, :8], right=pixels[:, -8:])
    assert edges[strip].min() > 240
    opposite = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}[strip]
    assert edges[opposite].max() < 15


def test_transparency_is_composited_on_white_after_shrinking(tmp_path):
    rgba = np.zeros((1601, 1601, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # transparent red everywhere: it must not bleed into what is visible
    rgba[:, 801:] = (255, 255, 255, 255)  # an opaque white right half: its edge splits blocks
    rgba[100:700, 100:700] = (0, 0, 255, 255)  # opaque blue
    rgba[900:1500, 100:700] = (0, 0, 0, 128)  # half-transparent black
    path = _saved(tmp_path, Image.fromarray(rgba), "t.png")
    loaded = np.asarray(load_image(path, 128), dtype=int)
    assert loaded.shape == (128, 128, 3)
    assert (loaded[:, 61:] >= 254).all()  # no pink fringe where the white half begins
    assert np.abs(loaded[20:50, 20:50] - (0, 0, 255)).max() <= 2
    assert np.abs(loaded[80:110, 20:50] - 127).max() <= 2
    palette = Image.fromarray(rgba[..., :3]).quantize(8)
    palette.info["transparency"] = palette.getpixel((0, 0))  # the transparent red
    loaded = np.asarray(load_image(_saved(tmp_path, palette, "tp.png"), 128), dtype=int)
    assert (loaded[:, 61:] >= 254).all()
    assert np.abs(loaded[20:50, 20:50] - (0, 0, 255)).max() <= 2


@pytest.mark.parametrize("mode", ["RGBA", "I;16"])
def test_band_by_band_reduce_matches_one_reduce(mode):
    rng = np.random.default_rng(0)
    # Pillow's own reduce premultiplies RGBA as a whole, and cannot take 16-bit.
    if mode == "RGBA":
        image = Image.fromarray(rng.integers(0, 256, (1003, 301, 4), dtype=np.uint8))
        whole, back = image.reduce(7), "RGBA"
    else:
        image = Image.fromarray(rng.integers(0, 65536, (1003, 301), dtype=np.uint16))
        whole, back = image.convert("I").reduce(7), "I"
    assert image.height > 3 * images.REDUCE_BAND_ROWS
    assert np.array_equal(np.asarray(images._reduce(image, 7).convert(back)), np.asarray(whole))


# The loader in a fresh interpreter: its peak resident memory above what it had after imports.
_PEAK_SCRIPT = """
import json, sys
from pnp.images import load_image

def status(key):
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(key))) * 1024

before = status("VmRSS:")
image = load_image(sys.argv[1], 128)
print(json.dumps({"size": image.size, "peak": status("VmHWM:") - before}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
@pytest.mark.parametrize("mode", ["I;16", "RGBA"])
def test_peak_memory_of_loading_a_large_image(tmp_path, mode):
    side = 6000  # 36 MP
    if mode == "I;16":
        pixels = np.full((side, side), 30000, dtype=np.uint16)
        pixels[::50] = 1000
    else:
        pixels = np.zeros((side, side, 4), dtype=np.uint8)
        pixels[:, : side // 2] = (200, 90, 10, 255)
        pixels[::50, :, 3] = 128
    path = tmp_path / "large.png"
    Image.fromarray(pixels).save(path, compress_level=1)
    del pixels
    env = {**os.environ, "PYTHONPATH": str(Path(images.__file__).parents[1])}
    command = [sys.executable, "-c", _PEAK_SCRIPT, str(path)]
    run = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    result = json.loads(run.stdout)
    assert result["size"] == [128, 128]
    # Pillow holds the decoded image at 2 bytes a pixel for 16-bit, 4 for RGBA. Shrinking adds
    # a band at a time and the 400 x 400 reduced copy; 32 MiB covers those and the libraries'
    # buffers (about 14 MiB here). A second full-size copy would not fit; the loader before
    # this bound took 964 MiB for the 16-bit image (13 times its size), 826 MiB for the RGBA.
    decoded = side * side * (2 if mode == "I;16" else 4)
    assert result["peak"] < decoded + 32 * 2**20, result
