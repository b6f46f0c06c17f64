"""Classifier-free guidance with the PnP negative-prompt schedules."""

from __future__ import annotations

import math

import torch


def negative_prompt_alphas(schedule: str, alpha: float, steps: int) -> list[float]:
    """Weight alpha_i of the unconditional term at sampling step i = 0..steps-1.

    constant: alpha; linear: alpha * (1 - i / (N - 1)); exp: alpha * exp(-6 i / (N - 1)).
    """
    last = max(steps - 1, 1)
    if schedule == "constant":
        return [alpha] * steps
    if schedule == "linear":
        return [alpha * (1 - i / last) for i in range(steps)]
    if schedule == "exp":
        return [alpha * math.exp(-6 * i / last) for i in range(steps)]
    raise ValueError(f"negative_prompt_schedule: {schedule!r} is not one of constant, linear, exp")


def guided_noise(
    eps_uncond: torch.Tensor | None,
    eps_negative: torch.Tensor | None,
    eps_cond: torch.Tensor,
    alpha: float,
    scale: float,
) -> torch.Tensor:
    """eps = eps~ + s (eps_c - eps~), with eps~ = alpha eps_u + (1 - alpha) eps_neg.

    A term whose weight is zero may be None: its UNet row was never computed.
    """
    if eps_negative is None or alpha == 1:
        base = eps_uncond
    elif eps_uncond is None or alpha == 0:
        base = eps_negative
    else:
        base = alpha * eps_uncond + (1 - alpha) * eps_negative
    return base + scale * (eps_cond - base)
