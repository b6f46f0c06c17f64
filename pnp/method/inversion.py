"""The source trajectory of a real image: DDIM inversion, all in memory."""

from __future__ import annotations

import torch

from pnp.method.ddim import DDIMSchedule, StepEnd, ddim_step
from pnp.method.noise_predictor import NoisePredictor
from pnp.method.text import TextEmbeddings


def invert(
    predict: NoisePredictor,
    schedule: DDIMSchedule,
    latent: torch.Tensor,
    embedding: TextEmbeddings,
    steps: int,
    inversion_steps: int,
    step_end: StepEnd | None = None,
) -> dict[int, torch.Tensor]:
    """DDIM-invert ``latent`` with ``inversion_steps`` steps, keeping it at each of the ``steps`` sampling timesteps.

    Step i evaluates the UNet at t_i on the latent at t_{i-1} (Song et al. 2021, Sec. 4.3); the
    inversion stops at the noisiest sampling timestep, since nothing later is used.
    """
    needed = schedule.timesteps(steps)
    path = schedule.inversion_timesteps(inversion_steps, up_to=needed[0])
    missing = set(needed) - set(path)
    if missing:
        raise ValueError(f"{inversion_steps} inversion steps never reach timesteps {sorted(missing)[:5]}")
    kept, previous, z = {}, None, latent
    for i, t in enumerate(path):
        eps = predict(z, t, embedding)
        z = ddim_step(z, eps, schedule.alpha_bar(previous), schedule.alpha_bar(t))
        if step_end is not None and (z := step_end(i, t, z)) is None:
            break
        if t in needed:
            kept[t] = z
        previous = t
    return kept
