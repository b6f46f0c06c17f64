"""Writing feature visualisations: every map and a grid per map, and a folder of an earlier run's maps."""

import numpy as np
import pytest
from PIL import Image

from pnp.app.feature_files import check_feature_folder, write_feature_maps
from pnp.config import ConfigError
from pnp.visual.grids import GAP, LABEL_WIDTH, MARGIN
from pnp.visual.visualise import feature_maps

BLOCK = "up_blocks.1.resnets.1"
ATTN1 = "up_blocks.1.attentions.1.transformer_blocks.0.attn1"
DEFAULT_MAPS = [f"{BLOCK}.conv1", f"{BLOCK}.conv2", f"{ATTN1}.to_q", f"{ATTN1}.to_k", f"{ATTN1}.attention"]


@pytest.fixture(scope="module")
def two_prompts(pipe):
    """A visualisation of a photo and two translations, with the default maps at two timesteps."""
    y, x = np.mgrid[0:128, 0:160]
    photo = Image.fromarray(np.stack([x, y, x + y], axis=-1).astype(np.uint8), "RGB")
    return photo, feature_maps(
        pipe, prompt=["a cat", "A Red Car!"], image=photo, timesteps=[751, 1], num_inference_steps=4, resolution=128
    )


def test_files_and_grids(tmp_path, two_prompts):
    _, maps = two_prompts
    grids = write_feature_maps(maps, tmp_path)
    expected = {
        f"{name}/{i:02d}-{label}-t{t}.png"
        for name in DEFAULT_MAPS
        for t in (751, 1)
        for i, label in enumerate(["source", "a-cat", "a-red-car"])
    }
    written = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png")}
    assert written == expected | {f"{name}.png" for name in DEFAULT_MAPS}
    assert grids == [tmp_path / f"{name}.png" for name in DEFAULT_MAPS]
    with Image.open(tmp_path / f"{ATTN1}.attention" / "02-a-red-car-t1.png") as image:
        assert image.size == (192, 128)
    with Image.open(grids[0]) as grid:
        grid = grid.convert("RGB")
        # Columns: the image, then one per timestep; rows: the three images; tiles at the working size.
        top = grid.height - MARGIN - 3 * (128 + GAP)
        assert grid.size == (LABEL_WIDTH + 3 * (192 + GAP) + MARGIN, top + 3 * (128 + GAP) + MARGIN)
        for row, image in enumerate(maps.images):
            for column, tile in enumerate([image, *(maps.maps[DEFAULT_MAPS[0]][t].images[row] for t in (751, 1))]):
                x, y = LABEL_WIDTH + column * (192 + GAP), top + row * (128 + GAP)
                assert np.array_equal(np.asarray(grid.crop((x, y, x + 192, y + 128))), np.asarray(tile))


def test_an_earlier_runs_maps_are_kept_unless_overwritten(tmp_path, two_prompts):
    (tmp_path / f"{BLOCK}.conv9").mkdir()
    (tmp_path / f"{BLOCK}.conv9" / "00-source-t1.png").write_bytes(b"")
    (tmp_path / f"{BLOCK}.conv9.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--overwrite"):
        check_feature_folder(tmp_path)
    checked = check_feature_folder(tmp_path, overwrite=True)
    assert len(list(tmp_path.iterdir())) == 3  # replaced only once the new maps are all written
    write_feature_maps(two_prompts[1], checked)
    assert {p.name for p in tmp_path.iterdir()} == {"notes.txt", *DEFAULT_MAPS, *(f"{m}.png" for m in DEFAULT_MAPS)}
