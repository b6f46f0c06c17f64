"""``pnp batch`` with a ``mask`` column, on the local backend: masked rows, and bad masks failed before any work.

The command runs in-process through ``pnp.app.cli.main``. The Ray backend's run of a masked job is in
``test_ray.py``, beside its cluster.
"""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from pnp.app.cli import flag, main
from pnp.batch.manifest import check_masks, read_manifest
from pnp.images import resize_for_model

FAST = ["--steps", "2", "--resolution", "128", "--dtype", "float32", "--device", "cpu", "--quiet"]
PASTE = ["--mask-paste", "--mask-feather", "0"]
# The drawn rectangle (rows, columns) of the 160x128 photo, and at its 192x128 working size (columns x 1.2).
RECTANGLE = (slice(32, 96), slice(50, 110))
WORKING_RECTANGLE = (slice(32, 96), slice(60, 132))
LATENT_PIXEL = 8


def masked_photos(folder):
    """A 160x128 photo, a mask marking a rectangle of it, and masks that break each rule."""
    y, x = np.mgrid[0:128, 0:160]
    pixels = np.stack([x * 255 / 159, y * 255 / 127, np.full_like(x, 90.0)], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(folder / "a.png")
    mask = np.zeros((128, 160), np.uint8)
    mask[RECTANGLE] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.new("L", (160, 128)).save(folder / "black.png")
    Image.fromarray(mask[:, :128].copy()).save(folder / "square.png")
    (folder / "notes.png").write_text("not an image")
    return folder


def outside(rectangle) -> np.ndarray:
    """Where a 192x128 output must be the source's pixels: more than a latent pixel from the rectangle (the latent
    grid decides the mask's edge to within one)."""
    rows, columns = rectangle
    near = np.zeros((128, 192), bool)
    near[
        rows.start - LATENT_PIXEL : rows.stop + LATENT_PIXEL, columns.start - LATENT_PIXEL : columns.stop + LATENT_PIXEL
    ] = True
    return ~near


def write_csv(path, rows):
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, list(dict.fromkeys(name for row in rows for name in row)))
        writer.writeheader()
        writer.writerows(rows)
    return path


def records(out):
    return {p.stem: json.loads(p.read_text()) for p in (out / "records").iterdir()}


@pytest.fixture(scope="module")
def masked_job(tiny_model_dir, tmp_path_factory):
    """A job of a masked row, an unmasked one in the same call, and a row breaking each mask rule."""
    folder = masked_photos(tmp_path_factory.mktemp("masked"))
    rows = [
        {"id": "masked", "image": "a.png", "mask": "mask.png"},
        {"id": "plain", "image": "a.png"},
        {"id": "black", "image": "a.png", "mask": "black.png"},
        {"id": "square", "image": "a.png", "mask": "square.png"},
        {"id": "notes", "image": "a.png", "mask": "notes.png"},
        {"id": "gen", "generation-prompt": "a house", "mask": "mask.png"},
    ]
    manifest = write_csv(folder / "job.csv", rows)
    out = folder / "out"
    argv = ["batch", str(manifest), "--out", str(out), "--model", str(tiny_model_dir), "--prompt", "a cat"]
    status = main([*argv, *FAST, *PASTE])
    return folder, out, status


def test_a_masked_row_keeps_its_photo_outside_the_mask(masked_job):
    folder, out, status = masked_job
    assert status == 1  # the bad masks' rows
    source = np.asarray(resize_for_model(Image.open(folder / "a.png"), 128))
    masked = np.asarray(Image.open(out / "images/masked/00-a-cat.png").convert("RGB"))
    plain = np.asarray(Image.open(out / "images/plain/00-a-cat.png").convert("RGB"))
    keep = outside(WORKING_RECTANGLE)
    assert np.array_equal(masked[keep], source[keep])  # the paste: the photo's pixels, exactly
    assert (masked[WORKING_RECTANGLE] != source[WORKING_RECTANGLE]).any(axis=-1).mean() > 0.5
    assert (plain[keep] != source[keep]).any(axis=-1).mean() > 0.5  # its call-mate is edited everywhere
    assert records(out)["masked"]["request"]["mask"] == str(folder / "mask.png")


@pytest.mark.parametrize(
    "key, error",
    [
        ("black", "mask: the mask is all black"),
        ("square", "mask: the mask is 128x128 pixels but its image is 160x128"),
        ("notes", "mask: "),
        ("gen", "mask: a mask marks part of an image; a generated source has none to mark"),
    ],
)
def test_a_bad_mask_fails_its_row_before_any_work(masked_job, key, error):
    """A row failed by the pipeline would name the worker that ran it (local); one failed before work, none."""
    _, out, _ = masked_job
    record = records(out)[key]
    assert record["error"].startswith(error) and record["worker"] is None, record
    if key == "notes":
        assert "notes.png is not a readable image" in record["error"]


def test_results_name_each_rows_mask(masked_job):
    _, out, _ = masked_job
    with (out / "results.csv").open() as file:
        lines = {line["id"]: line for line in csv.DictReader(file)}
    assert lines["masked"]["mask"] == "mask.png" and lines["plain"]["mask"] == ""


def test_without_a_resolution_the_size_rule_takes_the_models_own(tmp_path):
    folder = masked_photos(tmp_path)
    manifest = write_csv(folder / "job.csv", [{"id": "square", "image": "a.png", "mask": "square.png", "prompt": "a"}])
    rows = read_manifest(manifest, {}, flag)
    [checked] = check_masks(rows, flag, model_resolution=128)
    assert checked.error.startswith("mask: the mask is 128x128 pixels but its image is 160x128"), checked.error
    [waiting] = check_masks(rows, flag, model_resolution=None)  # a single-file model: known once it loads
    assert waiting.error is None and waiting.job.source.mask_file == folder / "square.png"
