"""Writing feature visualisations (``pnp.visual.maps.FeatureMaps``): every map and a grid per map, or the grids alone.

The command line's ``features`` writes ``<map>/NN-<label>-t<T>.png`` and ``<map>.png`` grids into its
folder; the predictor and the web UI put the grids after a translation's outputs.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from pnp.config import ConfigError
from pnp.outputs import OutputOptions, save_image, slug
from pnp.visual.maps import BLOCK, FeatureMaps



def map_file_names(maps: FeatureMaps) -> dict[tuple[str, int, int], str]:
    """(map, timestep, image) -> ``<map>/<NN>-<label>-t<T>.png``, NN being the image's position (00: the source)."""
    return {
        (name, t, i): f"{name}/{i:02d}-{label}-t{t}.png"
        for name in maps.maps
        for t in maps.timesteps
        for i, label in enumerate(maps.labels)
    }


def write_feature_maps(maps: FeatureMaps, folder: str | Path) -> list[Path]:
    """Write every map as ``folder/<map>/<NN>-<label>-t<T>.png`` and one grid per map as ``folder/<map>.png``.

    Returns the grids' paths, in map order.
    """
    folder = Path(folder)
    png = OutputOptions("png")
    for (name, t, i), file_name in map_file_names(maps).items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        save_image(maps.maps[name][t].images[i], folder / file_name, png)
    return [save_image(maps.grid(name), folder / f"{name}.png", png) for name in maps.maps]


def write_feature_grids(maps: FeatureMaps, folder: str | Path, options: OutputOptions, first: int) -> list[Path]:
    """Write one grid per map into ``folder`` as ``NN-features-<map slug>.<format>``, numbered from ``first``."""
    return [
        save_image(maps.grid(name), Path(folder) / f"{first + k:02d}-features-{slug(name, length=len(name))}."
                   f"{options.output_format}", options)
        for k, name in enumerate(maps.maps)
    ]


def check_feature_folder(folder: str | Path, overwrite: bool = False) -> Path:
    """Refuse a folder holding an earlier run's maps (or, with ``overwrite``, delete them) before any work."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError("out", f"{folder} is a file, not a folder; name a folder for the maps")
    earlier = sorted(p for p in folder.iterdir() if re.match(rf"{BLOCK}\.", p.name)) if folder.is_dir() else []
    if earlier and not overwrite:
        raise ConfigError(
            "out",
            f"{folder} already holds maps of an earlier run ({earlier[0].name}, ...); "
            "choose another folder, or pass --overwrite to replace them",
        )
    for path in earlier:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return folder
