"""DDIM (eta = 0): a model's noise schedule, and the deterministic step used both to sample and to invert.

The step works in epsilon, the noise, whatever the model predicts (``pnp.method.prediction``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from pnp.method.timesteps import inversion_timesteps, sampling_timesteps

# What the DDIM loops (inversion, generation, translation) call after every step, with the step's
# index, timestep and latents; it returns the latents to go on with, or None to stop the loop.
StepEnd = Callable[[int, int, torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True)
class DDIMSchedule:
    """The noise schedule of a model: cumulative alphas and "leading" timestep spacing (``pnp.method.timesteps``)."""

    alphas_cumprod: torch.Tensor  # (num_train_timesteps,) float32
    final_alpha_cumprod: torch.Tensor  # 0-d; the "timestep before the first" (alphas_cumprod[0] for SD)
    steps_offset: int
    prediction_type: str = "epsilon"  # what the UNet predicts: one of pnp.method.prediction.PREDICTION_TYPES

    @classmethod
    def from_config(cls, scheduler_config) -> "DDIMSchedule":
        """Build from any Stable Diffusion scheduler config (DDIM, PNDM, Euler, ... share the betas and prediction
        type)."""
        scheduler = DDIMScheduler.from_config(scheduler_config)
        return cls(
            scheduler.alphas_cumprod,
            scheduler.final_alpha_cumprod,
            scheduler.config.steps_offset,
            scheduler.config.prediction_type,
        )

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def timesteps(self, steps: int) -> list[int]:
        """Sampling timesteps, noisiest first: 50 steps give 981, 961, ..., 1."""
        return sampling_timesteps(steps, self.num_train_timesteps, self.steps_offset)

    def sampling_pairs(self, steps: int) -> list[tuple[int, int | None]]:
        """(t, next cleaner t) for each sampling step; None after the last, the clean end."""
        ts = self.timesteps(steps)
        return list(zip(ts, ts[1:] + [None]))

    def inversion_timesteps(self, inversion_steps: int, up_to: int) -> list[int]:
        """Inversion timesteps, cleanest first, stopping at ``up_to`` (the noisiest one needed)."""
        return inversion_timesteps(inversion_steps, up_to, self.num_train_timesteps, self.steps_offset)

    def alpha_bar(self, t: int | None) -> torch.Tensor:
        """Cumulative alpha at timestep t; None stands for the clean end of the chain."""
        return self.final_alpha_cumprod if t is None else self.alphas_cumprod[t]


def ddim_step(
    z: torch.Tensor, eps: torch.Tensor, alpha_bar_from: torch.Tensor, alpha_bar_to: torch.Tensor
) -> torch.Tensor:
    """Move a latent along the deterministic DDIM path (Song et al. 2021, eq. 12 with sigma = 0).

    Sampling goes from a noisier to a cleaner alpha_bar, inversion the other way; the same
    formula (in the same operation order as diffusers' schedulers) serves both.
    """
    x0 = (z - (1 - alpha_bar_from) ** 0.5 * eps) / alpha_bar_from**0.5
    return alpha_bar_to**0.5 * x0 + (1 - alpha_bar_to) ** 0.5 * eps
