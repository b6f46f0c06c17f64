"""The web UI's runs, without the page: form values to a checked request, and one run at a time on the model.

Gradio-free, so that what the form asks of the pipeline is tested without a browser; ``pnp.ui``
draws the page around it. Fields are the form's (``pnp.form``), and every error names the field
to change, as the Cog predictor's do.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import MAX_SEED, ConfigError, PnPConfig, check_seed
from .features import write_feature_grids
from .form import config_resolution, form_input, form_name
from .images import load_image
from .outputs import OutputOptions, write_outputs

logger = logging.getLogger("pnp.ui")

# The form's fields that PnPConfig takes as they are (by their pipeline names).
CONFIG_FIELDS = (
    "generation_prompt", "scale", "feature_injection_threshold", "attention_injection_threshold", "negative_prompt",
    "negative_prompt_alpha", "negative_prompt_schedule", "num_inference_steps", "num_inversion_steps",
    "generation_scale", "resolution",
)
PNG = OutputOptions("png")  # feature grids are drawings with sharp edges: lossless whatever the outputs' format
# Told (phase, steps done, steps in all) after every inversion or generation step and every translation step.
Progress = Callable[[str, int, int], None]


class Stopped(Exception):
    """The run was stopped before it finished; the model is clean and ready for the next."""


@dataclass(frozen=True)
class Request:
    """A run the form asks for, checked: the configuration, the source image (None in generation mode), seed and output options."""

    config: PnPConfig
    image: object
    seed: int
    options: OutputOptions
    feature_maps: bool = False
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunResult:
    """What a run shows: the output files with their captions (generated source first), a line about the run,
    and the feature grids (``pnp.features``) with their map names, if they were asked for."""

    files: list[Path]
    captions: list[str]
    status: str
    grids: list[Path] = field(default_factory=list)
    maps: list[str] = field(default_factory=list)


def parse_form(values: dict, model_resolution: int | None = None) -> Request:
    """Check the form's values (by field name) before any model work; ConfigError names the field to change.

    ``model_resolution`` is the model's own size, which the form's resolution 0 stands for (without
    it, the image is read at its own size and the pipeline resizes it).

    ``translation_prompts`` holds one prompt per line (blank lines are skipped). Whole numbers may
    come as floats (2.0), as number fields send them, or as text, as the fields that may be left
    blank and the drop-downs send them; a blank seed picks a random one. Values come as the page's
    API takes them, unchecked: text fields must hold text, check boxes true or false.
    """
    values = {name: _whole_number(name, value) for name, value in values.items()}
    try:
        for name, value in values.items():
            _check_type(name, value)
        settings = {form_input(name).param: values[name] for name in CONFIG_FIELDS}
        settings["resolution"] = config_resolution(settings["resolution"])
        config = PnPConfig(
            prompt=[line for line in (values["translation_prompts"] or "").splitlines() if line.strip()], **settings
        )
        if model_resolution is not None:
            config = config.resolved(model_resolution)
        options = OutputOptions(values["output_format"], values["output_quality"])
        seed = random.randint(0, MAX_SEED) if values["seed"] is None else check_seed(values["seed"])
        notes = []
        image = None
        if config.generating:
            notes.append(f"The source was generated with seed {seed}.")
            if values["input_image"] is not None:
                notes.append("input_image was ignored: generation_prompt is set.")
        elif values["input_image"] is not None:
            # Called by its name: the page's uploads sit in Gradio's temporary folder, under the name they came with.
            image = load_image(values["input_image"], config.resolution, name=Path(values["input_image"]).name)
        else:
            raise ConfigError("image", "give an input image or a generation prompt")
    except ConfigError as err:
        raise ConfigError(form_name(err.param), err.reason) from None
    return Request(config, image, seed, options, bool(values["feature_maps"]), tuple(notes))


def _check_type(name: str, value: object) -> None:
    kind = form_input(name).kind
    if kind == "text" and not (value is None or isinstance(value, str)):
        raise ConfigError(name, f"{value!r} is not text")
    if kind == "bool" and not isinstance(value, bool):
        raise ConfigError(name, f"{value!r} is neither true nor false")


def _whole_number(name: str, value: object) -> object:
    """An int field's value as an int, None if blank; anything else is left for the check to refuse, naming the field."""
    if form_input(name).kind != "int":
        return value
    if isinstance(value, str):
        text = value.strip()
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else (text or None)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


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
        count = len(config.prompt)
        status = " ".join([f"{count} translation{'' if count == 1 else 's'} in {seconds:.1f} s.", *request.notes])
        return RunResult(files, captions, status, grids, list(maps.maps) if maps else [])

    def _translate(self, request: Request, step_end):
        """The pipeline's output, and the feature maps (None unless asked for), made in the same run."""
        kwargs = dict(image=request.image, generator=torch.Generator("cpu").manual_seed(request.seed),
                      callback_on_step_end=step_end, **request.config.as_kwargs())
        if not request.feature_maps:
            return self.pipe(**kwargs), None
        maps = self.pipe.feature_maps(**kwargs)
        return maps.translation, maps

    def _new_outputs_folder(self) -> Path:
        # The page has copied the previous run's files by the time the next run starts.
        if self._outputs is not None:
            shutil.rmtree(self._outputs, ignore_errors=True)
        self._outputs = Path(tempfile.mkdtemp(prefix="run-", dir=self.folder))
        return self._outputs
