"""``pnp translate --mask``: masked editing from the command line, end to end on the tiny random model."""

import numpy as np
import pytest
from PIL import Image

from pnp.images import resize_for_model
from support.cli import FAST, run_cli


def drawing(size=(160, 128), rows=slice(32, 96), columns=slice(50, 110)) -> Image.Image:
    """White strokes on a transparent layer, as a drawing program saves a mask layer."""
    pixels = np.zeros((size[1], size[0], 4), np.uint8)
    pixels[rows, columns] = 255
    return Image.fromarray(pixels, "RGBA")


def test_translate_with_a_mask_and_the_paste_keeps_the_photos_pixels_outside(tmp_path, photo):
    photo.save(tmp_path / "in.png")
    drawing().save(tmp_path / "mask.png")
    out = tmp_path / "out"
    done = run_cli(
        "translate",
        "--image",
        str(tmp_path / "in.png"),
        "--mask",
        str(tmp_path / "mask.png"),
        "--mask-paste",
        "--mask-feather",
        "0",
        "--prompt",
        "a cat",
        "--out",
        str(out),
        "--quiet",
        *FAST,
    )
    assert done.returncode == 0, done.stderr
    [path] = sorted(out.iterdir())
    with Image.open(path) as image:
        result = np.asarray(image.convert("RGB"))
    source = np.asarray(resize_for_model(photo, 128))  # the photo at its working size, 192x128
    # The drawing's rectangle at the working size (columns x 1.2), with a latent pixel's margin.
    near = np.zeros((128, 192), bool)
    near[32 - 8 : 96 + 8, 60 - 8 : 132 + 8] = True
    assert np.array_equal(result[~near], source[~near])
    assert (result[40:88, 70:120] != source[40:88, 70:120]).any(axis=-1).mean() > 0.5


@pytest.mark.parametrize(
    "args,message",
    [
        (["--image", "in.png", "--mask", "mask.png", "--mask", "mask.png"], "error: --mask: give one --mask per"),
        (["--image", "in.png", "--mask", "black.png"], "error: --mask: the mask is all black"),
        (["--image", "in.png", "--mask", "square.png"], "error: --mask: the mask is 128x128 pixels but its image"),
        (["--image", "in.png", "--mask", "notes.png"], "error: --mask: notes.png is not a readable image"),
        (["--image", "in.png", "--mask", "mask.png", "--mask-dilation", "-1"], "error: --mask-dilation: -1 is out"),
        (["--generation-prompt", "a dog", "--mask", "mask.png"], "error: --mask: a mask marks part of an --image"),
    ],
)
def test_bad_masks_are_one_line_and_exit_status_2(tmp_path, photo, args, message):
    photo.save(tmp_path / "in.png")
    drawing().save(tmp_path / "mask.png")
    Image.new("L", (160, 128)).save(tmp_path / "black.png")
    drawing((128, 128)).save(tmp_path / "square.png")
    (tmp_path / "notes.png").write_text("not an image")
    done = run_cli("translate", *args, "--prompt", "a cat", "--out", "out", "--quiet", *FAST, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert message in lines[-1] and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def _refuse_to_load(*args, **kwargs):
    raise AssertionError("the model loaded before the masks were checked")


AT_128 = ["--resolution", "128"]


@pytest.mark.parametrize(
    "mask,resolution,reason",
    [
        ("black.png", AT_128, "the mask is all black"),
        ("black.png", [], "the mask is all black"),
        ("white.png", AT_128, "the mask is all white"),
        ("white.png", [], "the mask is all white"),
        ("square.png", AT_128, "the mask is 128x128 pixels but its image is 160x128"),
        (
            "square.png",
            [],
            "the mask is 128x128 pixels but its image is 160x128: another aspect ratio (1 against 1.25; ",
        ),
        ("notes.png", [], "notes.png is not a readable image"),
    ],
)
def test_bad_masks_are_refused_before_the_model_loads(
    tmp_path, photo, tiny_model_dir, monkeypatch, capsys, mask, resolution, reason
):
    """In process, with a loader that fails if called: each mask rule runs before the model loads. Without a
    --resolution the size rule takes the model's own (128 px) from its folder's configuration files."""
    from pnp.app import cli

    photo.save(tmp_path / "in.png")
    Image.new("L", (160, 128)).save(tmp_path / "black.png")
    Image.new("L", (160, 128), 255).save(tmp_path / "white.png")
    drawing((128, 128)).save(tmp_path / "square.png")
    (tmp_path / "notes.png").write_text("not an image")
    monkeypatch.setattr(cli, "load_pipeline", _refuse_to_load)
    args = ["--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / mask), "--prompt", "a cat"]
    model = ["--model", str(tiny_model_dir)]
    status = cli.main(["translate", *args, "--out", str(tmp_path / "out"), *model, *resolution])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and line.startswith("error: --mask: ") and reason in line, line
    assert not (tmp_path / "out").exists()
