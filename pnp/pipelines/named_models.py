"""Opening a model by the name a user gives: a random-weight test model is built, a bundled one (``toy``) is a
folder of the package, anything else is a path or hub id."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pnp.pipelines.loading import RANDOM_MODELS, model_location
from pnp.pipelines.random_models import random_model_folder


@contextmanager
def open_model(name: str) -> Iterator[str | Path]:
    """A path or hub id to load ``name`` from; a random-weight test model is built into a temporary folder."""
    if name in RANDOM_MODELS:
        with random_model_folder(name) as folder:
            yield folder
    else:
        yield model_location(name)
