"""PIE-Bench (Ju et al., "PnP Inversion"): a folder with ``mapping_file.json`` and ``annotation_images/``.

Each entry of the mapping file has ``image_path`` (relative to ``annotation_images/``),
``original_prompt``, ``editing_prompt`` (the edited words in ``[ ]``), ``editing_instruction``,
``editing_type_id``, ``blended_word`` and ``mask``: the edited region, run-length encoded as
[start, length] pairs over the flattened image (512x512 in PIE-Bench). The target prompt is the
editing prompt without its brackets, as PIE-Bench's own scripts use it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pnp.config import ConfigError
from pnp.evaluation.benchmarks import PIE_BENCH, Benchmark, Source, check_image, check_prompts

MAPPING_FILE = "mapping_file.json"
IMAGES_FOLDER = "annotation_images"
REQUIRED_KEYS = ("image_path", "editing_prompt", "editing_type_id", "mask")
INFO_KEYS = ("original_prompt", "editing_prompt", "editing_instruction", "blended_word")


def load(path: Path) -> Benchmark:
    """Read a PIE-Bench folder (or its mapping file); ConfigError("benchmark", ...) names the entry and the problem."""
    folder = path if path.is_dir() else path.parent
    mapping = folder / MAPPING_FILE
    try:
        data = json.loads(mapping.read_text())
    except FileNotFoundError:
        raise ConfigError("benchmark", f"{folder} has no {MAPPING_FILE}; is it a PIE-Bench folder?") from None
    except json.JSONDecodeError as err:
        raise ConfigError("benchmark", f"{mapping} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError("benchmark", f"{mapping}: expected a non-empty mapping from keys to entries")
    sources = [_source(str(key), entry, folder / IMAGES_FOLDER) for key, entry in data.items()]
    return Benchmark(folder, PIE_BENCH, tuple(sources))


def _source(key: str, entry: object, images: Path) -> Source:
    where = f"entry {key}"
    if not isinstance(entry, dict) or any(k not in entry for k in REQUIRED_KEYS):
        raise ConfigError("benchmark", f"{where}: expected a mapping with at least {', '.join(REQUIRED_KEYS)}")
    if not key.replace("-", "").replace("_", "").isalnum():
        raise ConfigError("benchmark", f"{where}: keys name output folders; use letters, digits, '-' and '_'")
    mask = entry["mask"]
    if not isinstance(mask, list) or len(mask) % 2 or not all(isinstance(v, int) and v >= 0 for v in mask):
        raise ConfigError("benchmark", f"{where}: mask must be a list of [start, length] pairs of whole numbers")
    image = check_image(where, images, entry["image_path"])
    pixels = _pixel_count(where, image)
    if any(start >= pixels for start in mask[0::2]):
        raise ConfigError("benchmark", f"{where}: a mask run starts past the last of the image's {pixels} pixels")
    return Source(
        key=key,
        prompts=check_prompts(where, unbracketed(str(entry["editing_prompt"]))),
        image=image,
        mask=tuple(mask),
        editing_type=str(entry["editing_type_id"]),
        info={name: entry.get(name) for name in INFO_KEYS},
    )


def _pixel_count(where: str, image: Path) -> int:
    try:
        with Image.open(image) as opened:  # reads the header only
            return opened.width * opened.height
    except (UnidentifiedImageError, OSError) as err:
        raise ConfigError("benchmark", f"{where}: {image} is not a readable image ({err})") from None


def unbracketed(prompt: str) -> str:
    """The editing prompt as it is translated and scored: 'a [red] car' -> 'a red car'."""
    return prompt.replace("[", "").replace("]", "")


def decode_mask(rle: tuple[int, ...] | list[int], height: int, width: int) -> np.ndarray:
    """PIE-Bench's mask as a (height, width) float array of 0 and 1, its border set to 1 as its evaluation does.

    ``rle`` holds [start, length] pairs over the flattened image; a run past the end is cut
    there. The border pixels count as edited "to avoid annotation errors in boundary" (PIE-Bench).
    """
    mask = decode_runs(rle, height * width).reshape(height, width)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 1
    return mask


def decode_runs(rle: tuple[int, ...] | list[int], length: int) -> np.ndarray:
    """A flat float array of ``length`` zeros with each [start, length] run of ``rle`` set to 1."""
    flat = np.zeros(length, dtype=np.float32)
    for start, run in zip(rle[0::2], rle[1::2]):
        flat[start : start + run] = 1
    return flat
