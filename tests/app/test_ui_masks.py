"""The web UI's mask: what its editor's strokes or upload make of it, and a masked run through the page's runner."""

import numpy as np
from PIL import Image

from pnp.app.ui import editor_mask
from pnp.app.ui_runs import read_form


def layer(strokes: bool) -> Image.Image:
    pixels = np.zeros((128, 256, 4), np.uint8)
    if strokes:
        pixels[40:80, 100:150] = (255, 255, 255, 255)
    return Image.fromarray(pixels, "RGBA")


def test_strokes_make_the_mask_whatever_the_background(tmp_path):
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 256, 3), np.uint8))
    photo.save(tmp_path / "photo.png")
    mask = editor_mask({"background": photo, "layers": [layer(True)]}, str(tmp_path / "photo.png"))
    expected = np.zeros((128, 256), bool)
    expected[40:80, 100:150] = True
    assert mask.mode == "L" and np.array_equal(np.asarray(mask) > 0, expected)


def test_without_strokes_the_input_image_is_no_mask_and_another_picture_is_an_uploaded_one(tmp_path):
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 256, 3), np.uint8))
    photo.save(tmp_path / "photo.png")
    assert (
        editor_mask({"background": photo.convert("RGBA"), "layers": [layer(False)]}, str(tmp_path / "photo.png"))
        is None
    )
    uploaded = Image.new("L", (256, 128))
    assert editor_mask({"background": uploaded, "layers": []}, str(tmp_path / "photo.png")) is uploaded
    assert editor_mask(None, None) is None


def test_the_form_reads_a_drawn_mask_as_it_is_and_an_uploaded_file_by_its_name(tmp_path):
    Image.new("RGB", (256, 128)).save(tmp_path / "photo.png")
    drawn = Image.new("L", (256, 128))
    request = read_form({"input_image": str(tmp_path / "photo.png"), "mask": drawn}, 128)
    assert request.mask is drawn
    layer(True).save(tmp_path / "mask.png")
    request = read_form({"input_image": str(tmp_path / "photo.png"), "mask": str(tmp_path / "mask.png")}, 128)
    assert request.mask.mode == "RGBA" and request.mask.size == (256, 128)  # transparency kept: read as black
