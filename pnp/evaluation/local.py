"""The local backend: ``PnPPipeline`` in this process, several real images per call where they share their prompts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pnp.evaluation.backends import IMAGES_PER_CALL, LOCAL, Job, Translation
from pnp.images import load_image
from pnp.method.generation import noise_generator


class LocalBackend:
    """Translates with a loaded ``PnPPipeline``, seeding a generated source's noise as the predictor does."""

    def __init__(self, pipe, images_per_call: int = IMAGES_PER_CALL) -> None:
        self.pipe = pipe
        self.images_per_call = images_per_call

    def translate(self, jobs: Iterable[Job]) -> Iterator[Translation]:
        for batch in batches(list(jobs), self.images_per_call):
            first = batch[0]
            images = None if first.config.generating else [load_image(job.source.image) for job in batch]
            generator = noise_generator(first.seed)
            result = self.pipe(image=images, generator=generator, **first.config.as_kwargs())
            count = len(first.config.prompt)
            for k, job in enumerate(batch):
                yield Translation(job, list(result.images[k * count : (k + 1) * count]), result.source_image, LOCAL)


def batches(jobs: list[Job], size: int) -> list[list[Job]]:
    """Runs of consecutive jobs that one call can translate: real images with equal settings, at most ``size``."""
    out: list[list[Job]] = []
    for job in jobs:
        last = out[-1] if out else None
        if last and len(last) < size and not job.config.generating and last[0].config == job.config:
            last.append(job)
        else:
            out.append([job])
    return out
