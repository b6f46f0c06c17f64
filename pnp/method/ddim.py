"""DDIM (eta = 0): a model's noise schedule, the deterministic step used both to sample and to invert, and
the conversion of every prediction type to the noise the step works in.

Inversion, guidance, sampling, the source cache and feature capture all work in epsilon, the
noise; a model that predicts v (Stable Diffusion 2.x at 768 px) or the clean sample has its output
converted once, by ``noise_from_output`` (called by ``pnp.method.noise_predictor.NoisePredictor``).
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
# What a UNet may predict (the scheduler config's ``prediction_type``), as diffusers names them.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class DDIMSchedule:
    """The noise schedule of a model: cumulative alphas and "leading" timestep spacing (``pnp.method.timesteps``)."""

    alphas_cumprod: torch.Tensor  # (num_train_timesteps,) float32
    final_alpha_cumprod: torch.Tensor  # 0-d; the "timestep before the first" (alphas_cumprod[0] for SD)
    steps_offset: int
    prediction_type: str = "epsilon"  # what the UNet predicts: one of PREDICTION_TYPES

    @classmethod
    def from_config(cls, scheduler_config) -> "DDIMSchedule":
        """Build from any Stable Diffusion scheduler config (DDIM, PNDM, Euler, ... share the betas and prediction type)."""
        scheduler = DDIMScheduler.from_config(scheduler_config)
        return cls(scheduler.alphas_cumprod, scheduler.final_alpha_cumprod, scheduler.config.steps_offset,
                   scheduler.config.prediction_type)

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


def ddim_step(z: torch.Tensor, eps: torch.Tensor, alpha_bar_from: torch.Tensor, alpha_bar_to: torch.Tensor) -> torch.Tensor:
    """Move a latent along the deterministic DDIM path (Song et al. 2021, eq. 12 with sigma = 0).

    Sampling goes from a noisier to a cleaner alpha_bar, inversion the other way; the same
    formula (in the same operation order as diffusers' schedulers) serves both.
    """
    x0 = (z - (1 - alpha_bar_from) ** 0.5 * eps) / alpha_bar_from**0.5
    return alpha_bar_to**0.5 * x0 + (1 - alpha_bar_to) ** 0.5 * eps


def noise_from_output(output: torch.Tensor, latents: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The noise eps that a UNet ``output`` of ``prediction_type`` implies for ``latents`` x_t at cumulative alpha abar.

    With x_t = sqrt(abar) x0 + sqrt(1 - abar) eps and v = sqrt(abar) eps - sqrt(1 - abar) x0:
    v-prediction: eps = sqrt(abar) v + sqrt(1 - abar) x_t; sample: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar).

    Guidance may combine rows before or after this conversion with the same result: for fixed
    x_t and abar it is affine in the output, eps = a(x_t, abar) + b(abar) output, and guidance
    is a combination sum_i w_i out_i whose weights sum to one (eps~ + s (eps_c - eps~) with
    eps~ = alpha eps_u + (1 - alpha) eps_neg gives w = (1 - s) alpha, (1 - s)(1 - alpha), s), so
    sum_i w_i (a + b out_i) = a + b sum_i w_i out_i. The rows combined are a target's
    unconditional, negative and conditional rows, which share x_t and t, hence a and b.
    """
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return alpha_bar**0.5 * output + (1 - alpha_bar) ** 0.5 * latents
    if prediction_type == "sample":
        return (latents - alpha_bar**0.5 * output) / (1 - alpha_bar) ** 0.5
    raise ValueError(f"prediction_type: {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
