"""The local backend: ``PnPPipeline`` in this process, one job after another."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ..images import load_image
from .backends import LOCAL, Job, Translation


class LocalBackend:
    """Translates with a loaded ``PnPPipeline``, seeding a generated source's noise as the predictor does."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe

    def translate(self, jobs: Iterable[Job]) -> Iterator[Translation]:
        for job in jobs:
            image = None if job.config.generating else load_image(job.source.image)
            generator = torch.Generator("cpu").manual_seed(job.seed)
            result = self.pipe(image=image, generator=generator, **job.config.as_kwargs())
            yield Translation(job, list(result.images), result.source_image, LOCAL)
