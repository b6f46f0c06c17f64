"""The UNet work of the public implementations for the same job, to compare with this project's plan
(``pnp.method.plan``).

pnp-diffusers' preprocess.py and the original code both invert with 999 steps and then run a
999-step reconstruction, one row per step; translation then runs [source, uncond, cond] at every
sampling step, one prompt per pass.
"""

from __future__ import annotations

PUBLIC_INVERSION_STEPS = 999
PUBLIC_RECONSTRUCTION_STEPS = 999
PUBLIC_ROWS_PER_STEP = 3


def public_calls(prompts: int, steps: int) -> int:
    """UNet calls of the public implementations for ``prompts`` prompts of ``steps`` sampling steps."""
    return PUBLIC_INVERSION_STEPS + PUBLIC_RECONSTRUCTION_STEPS + steps * prompts


def public_rows(prompts: int, steps: int) -> int:
    """UNet rows of the public implementations; the inversion is counted once, shared by all prompts."""
    return PUBLIC_INVERSION_STEPS + PUBLIC_RECONSTRUCTION_STEPS + PUBLIC_ROWS_PER_STEP * steps * prompts
