"""Writing a translation's output images: file format, quality and names, shared by the CLI and the predictor.

Torch-free. Output names start with their zero-padded position, so they sort in output order:
the generated source first (generation mode), then one image per prompt, in prompt order.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pnp.config import ConfigError, check_choice, check_int

OUTPUT_FORMATS = ("png", "webp", "jpg")
_PIL_FORMATS = {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}
# What a name this module writes looks like; used to find an earlier run's outputs.
_OUTPUT_NAME = re.compile(r"^\d{2,}-[a-z0-9-]+\.(png|webp|jpg)$")


@dataclass(frozen=True)
class OutputOptions:
    """How output images are written: png (lossless), webp or jpg with a quality from 1 to 100."""

    output_format: str = "png"
    output_quality: int = 90

    def __post_init__(self) -> None:
        check_choice("output_format", self.output_format, OUTPUT_FORMATS)
        check_int("output_quality", self.output_quality, 1, 100)


def output_names(prompts, with_source: bool, output_format: str, images: list[str] | None = None) -> list[str]:
    """File names in output order: ``00-source.png`` (if any), then ``NN-<prompt slug>.png`` per prompt.

    With several input ``images`` (their labels, e.g. file stems), one name per image and prompt,
    image by image: ``NN-<image>-<prompt slug>.png``.
    """
    labels = output_labels(prompts, with_source, images)
    return [f"{i:02d}-{label}.{output_format}" for i, label in enumerate(labels)]


def output_labels(prompts, with_source: bool, images: list[str] | None = None) -> list[str]:
    """The labels of output names, in output order: ``source`` (if any), then each prompt's slug
    (with several ``images``, each image's label and slug, then each prompt's)."""
    if images and len(images) > 1:
        targets = [f"{slug(image)}-{slug(p)}" for image in images for p in prompts]
    else:
        targets = [slug(p) for p in prompts]
    return (["source"] if with_source else []) + targets


def slug(text: str, length: int = 48) -> str:
    """A file-name-safe label for a prompt: lower case, letters and digits joined by '-'."""
    label = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return label[:length].rstrip("-") or "prompt"


def check_output_folder(folder: str | Path, overwrite: bool = False) -> Path:
    """Make sure a run's outputs cannot be mixed up with an earlier run's, before any work starts.

    The folder may be new or hold no earlier outputs; with ``overwrite``, earlier outputs (files
    named as this module names them) are deleted. Anything else in the folder is left alone.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError("out", f"{folder} is a file, not a folder; name a folder for the outputs")
    earlier = sorted(p for p in folder.iterdir() if _OUTPUT_NAME.match(p.name)) if folder.is_dir() else []
    if earlier and not overwrite:
        raise ConfigError(
            "out",
            f"{folder} already holds {len(earlier)} outputs of an earlier run ({earlier[0].name}, ...); "
            "choose another folder, or pass --overwrite to replace them",
        )
    for path in earlier:
        path.unlink()
    return folder


def write_outputs(result, prompts, folder: str | Path, options: OutputOptions, images: list[str] | None = None) -> list[Path]:
    """Write a pipeline result's generated source (if any) and translations (PIL images) into ``folder``.

    ``images`` labels the input images when there are several (see ``output_names``). ``folder`` is
    created if missing; returns the paths in output order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with_source = result.source_image is not None
    outputs = ([result.source_image] if with_source else []) + list(result.images)
    names = output_names(prompts, with_source, options.output_format, images)
    return [save_image(image, folder / name, options) for image, name in zip(outputs, names, strict=True)]


def save_image(image: Image.Image, path: str | Path, options: OutputOptions) -> Path:
    """Write one image in the options' format, whole or not at all."""
    buffer = io.BytesIO()
    extra = {} if options.output_format == "png" else {"quality": options.output_quality}
    image.save(buffer, _PIL_FORMATS[options.output_format], **extra)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(buffer.getvalue())
    partial.replace(path)
    return path
