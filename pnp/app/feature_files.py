"""Writing feature visualisations (``pnp.visual.maps.FeatureMaps``): every map and a grid per map, or the grids alone.

The command line's ``features`` writes ``<map>/NN-<label>-t<T>.png`` and ``<map>.png`` grids into its
folder; the predictor and the web UI put the grids after a translation's outputs.
"""

from __future__ import annotations

import re
from pathlib import Path

from pnp.outputs import (
    OutputFolder,
    OutputOptions,
    all_or_nothing,
    as_output_folder,
    check_run_folder,
    save_image,
    slug,
)
from pnp.visual.maps import BLOCK, FeatureMaps


def map_file_names(maps: FeatureMaps) -> dict[tuple[str, int, int], str]:
    """(map, timestep, image) -> ``<map>/<NN>-<label>-t<T>.png``, NN being the image's position (00: the source)."""
    return {
        (name, t, i): f"{name}/{i:02d}-{label}-t{t}.png"
        for name in maps.maps
        for t in maps.timesteps
        for i, label in enumerate(maps.labels)
    }


def write_feature_maps(maps: FeatureMaps, folder: str | Path | OutputFolder) -> list[Path]:
    """Write every map as ``folder/<map>/<NN>-<label>-t<T>.png`` and one grid per map as ``folder/<map>.png``.

    All or nothing, replacing an ``OutputFolder``'s earlier maps (see ``pnp.outputs.all_or_nothing``).
    Returns the grids' paths, in map order.
    """
    png = OutputOptions("png")
    target = as_output_folder(folder)
    with all_or_nothing(target) as staging:
        for (name, t, i), file_name in map_file_names(maps).items():
            (staging / name).mkdir(exist_ok=True)
            save_image(maps.maps[name][t].images[i], staging / file_name, png)
        for name in maps.maps:
            save_image(maps.grid(name), staging / f"{name}.png", png)
    return [target.path / f"{name}.png" for name in maps.maps]


def write_feature_grids(maps: FeatureMaps, folder: str | Path, options: OutputOptions, first: int) -> list[Path]:
    """Write one grid per map into ``folder`` as ``NN-features-<map slug>.<format>``, numbered from ``first``."""
    return [
        save_image(
            maps.grid(name),
            Path(folder) / f"{first + k:02d}-features-{slug(name, length=len(name))}.{options.output_format}",
            options,
        )
        for k, name in enumerate(maps.maps)
    ]


def check_feature_folder(folder: str | Path, overwrite: bool = False) -> OutputFolder:
    """Before any work: a folder the maps can be written into, holding no earlier run's maps unless ``overwrite``
    (they are then replaced once the new ones are all written). A map's files are named after its module."""
    return check_run_folder(folder, lambda path: bool(re.match(rf"{BLOCK}\.", path.name)), overwrite, "maps")
