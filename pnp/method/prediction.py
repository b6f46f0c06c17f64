"""What a UNet predicts, and the noise each prediction type implies: the one conversion into epsilon.

Inversion, guidance, sampling, the source cache and feature capture all work in epsilon, the
noise; a model that predicts v (Stable Diffusion 2.x at 768 px) or the clean sample has its output
converted once, by ``noise_from_output`` (called by ``pnp.method.noise_predictor.NoisePredictor``).
Torch-free at import: the loading rules check a model's prediction type before torch loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# What a UNet may predict (the scheduler config's ``prediction_type``), as diffusers names them.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def noise_from_output(
    output: torch.Tensor, latents: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> torch.Tensor:
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
