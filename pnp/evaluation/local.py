"""The local backend: ``PnPPipeline`` in this process, several real images per call where they share their prompts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pnp.evaluation.backends import IMAGES_PER_CALL, LOCAL, Job, Translation, job_mask
from pnp.images import load_image_at
from pnp.messages import first_line
from pnp.method.generation import noise_generator


class LocalBackend:
    """Translates with a loaded ``PnPPipeline``, seeding a generated source's noise as the predictor does.

    With ``keep_going`` a job that fails (an unreadable image, a call that raises) comes back as a
    Translation with its error, and the other jobs go on; without, the error is raised.
    """

    def __init__(
        self, pipe, images_per_call: int = IMAGES_PER_CALL, keep_going: bool = False, worker: str = LOCAL
    ) -> None:
        self.pipe = pipe
        self.images_per_call = images_per_call
        self.keep_going = keep_going
        self.worker = worker

    def translate(self, jobs: Iterable[Job]) -> Iterator[Translation]:
        for batch in batches(list(jobs), self.images_per_call):
            readable, images, masks = [], [], []
            for job in batch:
                try:  # a job whose image or mask cannot be read fails alone
                    image = None if job.config.generating else load_image_at(job.source.image)
                    mask = job_mask(job)
                except Exception as err:
                    if not self.keep_going:
                        raise
                    yield self._failure(job, err)
                    continue
                readable.append(job)
                images.append(image)
                masks.append(mask)
            if readable:
                generating = batch[0].config.generating
                yield from self._call(readable, None if generating else images, masks)

    def _call(self, batch: list[Job], images: list | None, masks: list) -> Iterator[Translation]:
        first = batch[0]
        masks = masks if any(mask is not None for mask in masks) else None
        try:
            generator = noise_generator(first.seed)
            result = self.pipe(image=images, mask_image=masks, generator=generator, **first.config.as_kwargs())
        except Exception as err:
            if not self.keep_going:
                raise
            yield from (self._failure(job, err) for job in batch)
            return
        count = len(first.config.prompt)
        for k, job in enumerate(batch):
            yield Translation(job, list(result.images[k * count : (k + 1) * count]), result.source_image, self.worker)

    def _failure(self, job: Job, err: Exception) -> Translation:
        return Translation(job, [], None, self.worker, error=first_line(err))


def batches(jobs: list[Job], size: int) -> list[list[Job]]:
    """The calls that translate ``jobs``: real images with equal settings together, at most ``size`` a call.

    Images are grouped wherever they stand in the list (ImageNet-R-TI2I's images of one class, a
    catalogue's rows under one style), in the order each group first appears; a generated source is
    a call of its own.
    """
    out: list[list[Job]] = []
    open_calls: dict = {}  # settings -> the call still taking images with them
    for job in jobs:
        call = None if job.config.generating else open_calls.get(job.config)
        if call is not None and len(call) < size:
            call.append(job)
            continue
        out.append([job])
        if not job.config.generating:
            open_calls[job.config] = out[-1]
    return out
