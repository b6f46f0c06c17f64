"""Recording the outputs of chosen UNet modules (their features) for the source and the targets while a translation
runs.

Forward hooks on the chosen modules copy the rows shown (the source row and each target's
conditional row, found from ``UNetCall.layout``) at the chosen timesteps, and nothing else.
They are prepended to the module's hooks, so they run before the injection hooks
(``pnp.method.injection``) and record each row's own output: inside an injection window a target's
injected modules would otherwise just repeat the source's features. They return nothing, so a
translation with capture on is bit-identical to one without.

The source's features at timestep t are the UNet's on the source latent z_t with the source's
prompt embedding. Inside an injection window the translation's source row computes exactly that;
at a timestep outside the windows (or without target prompts) ``record_source`` makes one extra
UNet call on the trajectory's stored latent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import ExitStack
from functools import partial

import torch

from pnp.config import ConfigError
from pnp.method.noise_predictor import NoisePredictor
from pnp.method.plan import Row, RowKind, TranslationStep, UNetCall
from pnp.method.trajectory import Trajectory

SOURCE = 0  # image index of the source; target prompt p is image p + 1


class CaptureError(RuntimeError):
    """A hooked module did not run exactly once per recorded row; the message names it."""


class ModuleCapture:
    """Context manager: hooks on ``modules`` of ``unet`` recording ``images`` images at ``timesteps``.

    Use it as the pipeline's observer (``before_call`` arms the hooks for a translation call,
    ``source_ready`` keeps the source trajectory), then call ``record_source`` for the source's
    features the translation did not compute, and read them with ``outputs``.
    """

    def __init__(self, unet: torch.nn.Module, modules: Sequence[str], timesteps: Sequence[int], images: int) -> None:
        self.unet = unet
        self.modules = tuple(modules)
        self.timesteps = frozenset(timesteps)
        self.images = images
        self.trajectory: Trajectory | None = None
        self.extra_calls = 0
        self._hooks = ExitStack()
        self._records: dict[tuple[str, int, int], torch.Tensor] = {}
        self._armed: tuple[int, dict[int, int]] | None = None  # (timestep, {batch row: image})

    def __enter__(self) -> "ModuleCapture":
        found = dict(self.unet.named_modules())
        missing = [name for name in self.modules if name not in found]
        if missing:
            blocks = [name for name in found if re.fullmatch(r"(down|up)_blocks\.\d+|mid_block", name)]
            raise ConfigError("layers", f"this UNet has no module {missing[0]}; its blocks are {', '.join(blocks)}")
        with ExitStack() as hooks:  # a failure half-way removes the hooks already installed
            for name in self.modules:
                hooks.enter_context(found[name].register_forward_hook(partial(self._record, name), prepend=True))
            self._hooks = hooks.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.close()
        self._armed = None

    def source_ready(self, trajectory: Trajectory) -> None:
        """Keep the source trajectory, for ``record_source``."""
        self.trajectory = trajectory

    def before_call(self, step: TranslationStep, call: UNetCall) -> None:
        """Arm the hooks for the rows shown of the next translation call, if its timestep is visualised."""
        shown = {index: _image_of(row) for index, row in enumerate(call.layout)}
        rows = {index: image for index, image in shown.items() if image is not None}
        self._armed = (step.timestep, rows) if step.timestep in self.timesteps and rows else None

    def record_source(self, predict: NoisePredictor) -> None:
        """One UNet call on z_t with the source embedding per visualised timestep whose source features are missing."""
        self._armed = None
        trajectory = self.trajectory
        for t in sorted(self.timesteps, reverse=True):
            done = all((name, t, SOURCE) in self._records for name in self.modules)
            if done or t not in trajectory.latents:  # an interrupted run: ``outputs`` says what is missing
                continue
            self._armed = (t, {0: SOURCE})
            try:
                predict(trajectory.latents[t], t, trajectory.embedding)
            finally:
                self._armed = None
            self.extra_calls += 1

    def outputs(self, module: str, timestep: int) -> torch.Tensor:
        """The recorded outputs of ``module`` at ``timestep``, one per image, stacked: (images, ...)."""
        keys = [(module, timestep, image) for image in range(self.images)]
        missing = [key[2] for key in keys if key not in self._records]
        if missing:
            raise CaptureError(
                f"{module}: no output was recorded for image {missing[0]} at t={timestep}: the run stopped before "
                "that step, or the UNet never ran this module (a fused or custom attention processor, a compiled UNet?)"
            )
        return torch.stack([self._records[key] for key in keys])

    def _record(self, name: str, module, inputs, output: torch.Tensor) -> None:
        if self._armed is None:
            return
        t, rows = self._armed
        for row, image in rows.items():
            key = (name, t, image)
            if key in self._records:
                raise CaptureError(f"{name}: ran twice for image {image} at t={t}; its features are ambiguous")
            self._records[key] = output[row].detach().clone()


def _image_of(row: Row) -> int | None:
    """The image a batch row shows: the source row, a target's conditional row, or none (other guidance rows)."""
    if row.kind is RowKind.SOURCE:
        return SOURCE
    return row.prompt + 1 if row.kind is RowKind.TARGET_COND else None
