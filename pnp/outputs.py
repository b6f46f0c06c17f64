"""Naming and writing a translation's output files, shared by the CLI and the Cog predictor."""

from __future__ import annotations

import re
from pathlib import Path

from .editor import PnPResult
from .images import save_image


def output_names(prompts: list[str], with_source: bool, output_format: str) -> list[str]:
    """File names in output order: the generated source first (if any), then one per prompt.

    Each name starts with its zero-padded position, so names sort in output order.
    """
    labels = (["source"] if with_source else []) + [_slug(p) for p in prompts]
    return [f"{i:02d}-{label}.{output_format}" for i, label in enumerate(labels)]


def write_outputs(result: PnPResult, prompts: list[str], folder: str | Path, output_format: str, quality: int) -> list[Path]:
    """Write the generated source (if any) and the translations into ``folder``; returns the paths in order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = ([result.source_image] if result.source_image is not None else []) + result.images
    names = output_names(prompts, result.source_image is not None, output_format)
    return [save_image(image, folder / name, output_format, quality) for image, name in zip(images, names)]


def _slug(prompt: str, length: int = 48) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return slug[:length].rstrip("-") or "prompt"
