"""Reading every common format and mode, and the sizing rule."""

import io

import numpy as np
import pytest
from PIL import Image

from pnp.images import ImageError, load_image, resize_for_model, working_size


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
