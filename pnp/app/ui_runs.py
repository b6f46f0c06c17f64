"""The web UI's runs, without the page: form values to a checked request, and one run at a time on the model.

Gradio-free, so that what the form asks of the pipeline is tested without a browser; ``pnp.app.ui``
draws the page around it. Fields are the form's (``pnp.app.form``), and every error names the field
to change, as the Cog predictor's do.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pnp.app.feature_files import write_feature_grids
from pnp.app.form import Request, parse_form
from pnp.images import load_image
from pnp.messages import plural
from pnp.method.generation import noise_generator
from pnp.outputs import OutputOptions, write_outputs
from pnp.visual.visualise import feature_maps

logger = logging.getLogger("pnp.ui")

PNG = OutputOptions("png")  # feature grids are drawings with sharp edges: lossless whatever the outputs' format
# Told (phase, steps done, steps in all) after every inversion or generation step and every translation step.
Progress = Callable[[str, int, int], None]


class Stopped(Exception):
    """The run was stopped before it finished; the model is clean and ready for the next."""


@dataclass(frozen=True)
class RunResult:
    """What a run shows: the output files with their captions (generated source first), a line about the run,
    and the feature grids (``pnp.visual.maps``) with their map names, if they were asked for."""

    files: list[Path]
    captions: list[str]
    status: str
    grids: list[Path] = field(default_factory=list)
    maps: list[str] = field(default_factory=list)


def read_form(values: dict, model_resolution: int | None = None) -> Request:
    """The page's form (values by field name) as a checked request, before any model work (``pnp.app.form.parse_form``).

    The page's uploads sit in Gradio's temporary folder under the name they came with: errors call
    them by that name.
    """

    def read_image(path, resolution):
        return load_image(path, resolution, name=Path(path).name)

    return parse_form(values, model_resolution, read_image)


class Runner:
    """The loaded pipeline, run by one request at a time; each run's output files replace the previous run's.

    ``run`` may be called from any thread: a lock keeps a second run off the model until the
    first has finished, even if whoever started the first has stopped waiting for it.
    """

    def __init__(self, pipe, folder: str | Path) -> None:
        self.pipe = pipe
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._outputs: Path | None = None

    def run(self, request: Request, progress: Progress, stop: threading.Event) -> RunResult:
        """Translate as ``request`` says, telling ``progress`` after every step; raises Stopped once ``stop`` is set."""
        config = request.config

        def step_end(pipe, step, timestep, tensors):
            progress(pipe.phase, step + 1, pipe.num_timesteps)
            if stop.is_set():
                pipe._interrupt = True  # the pipeline stops after this step and removes its hooks
            return tensors

        with self._lock:
            if stop.is_set():
                raise Stopped()
            if config.generating:
                logger.info(f"generating the source with seed {request.seed}")  # as the seed field's help says
            try:
                result, maps = self._translate(request, step_end)
            except Exception:
                if stop.is_set():
                    raise Stopped() from None  # whatever a stopped run broke on, it was stopped
                raise
            if stop.is_set():
                raise Stopped()
            folder = self._new_outputs_folder()
            files = write_outputs(result, config.prompt, folder, request.options)
            grids = write_feature_grids(maps, folder, PNG, first=len(files)) if maps else []
        captions = ([f"source: {config.generation_prompt}"] if config.generating else []) + list(config.prompt)
        seconds = sum(v for k, v in result.metrics.items() if k.endswith("_s"))
        status = " ".join(
            [
                f"{plural(len(config.prompt), 'translation')} in {seconds:.1f} s.",
                *(f"{note}." for note in request.notes),
            ]
        )
        return RunResult(files, captions, status, grids, list(maps.maps) if maps else [])

    def _translate(self, request: Request, step_end):
        """The pipeline's output, and the feature maps (None unless asked for), made in the same run."""
        kwargs = dict(
            image=request.image,
            generator=noise_generator(request.seed),
            callback_on_step_end=step_end,
            **request.config.as_kwargs(),
        )
        if not request.feature_maps:
            return self.pipe(**kwargs), None
        maps = feature_maps(self.pipe, **kwargs)
        return maps.translation, maps

    def _new_outputs_folder(self) -> Path:
        # The page has copied the previous run's files by the time the next run starts.
        if self._outputs is not None:
            shutil.rmtree(self._outputs, ignore_errors=True)
        self._outputs = Path(tempfile.mkdtemp(prefix="run-", dir=self.folder))
        return self._outputs
