"""The UNet work a translation implies, for this project and for the public implementations.

Computed from the configuration alone, so that the benchmark can check the engine's own record
of its UNet calls against it.
"""

from __future__ import annotations

from pnp.config import PnPConfig

# pnp-diffusers' preprocess.py and the original code both invert with 999 steps and then run a
# 999-step reconstruction, one row per step; translation then runs [source, uncond, cond] at
# every sampling step, one prompt per pass.
PUBLIC_INVERSION_STEPS = 999
PUBLIC_RECONSTRUCTION_STEPS = 999
PUBLIC_ROWS_PER_STEP = 3


def inversion_batches(config: PnPConfig, num_train_timesteps: int = 1000, steps_offset: int = 1) -> list[int]:
    """One row per inversion timestep, up to and including the noisiest sampling timestep."""
    noisiest = (config.steps - 1) * (num_train_timesteps // config.steps) + steps_offset
    stride = num_train_timesteps // config.inversion_steps
    calls = sum(1 for k in range(config.inversion_steps) if k * stride + steps_offset <= noisiest)
    return [1] * calls


def translation_batches(config: PnPConfig) -> list[int]:
    """Rows of each translation UNet call: per chunk of k prompts, k uncond + k cond rows, plus the
    source row in the first chunk of every step inside an injection window."""
    if config.negative_prompt:
        raise ValueError("the benchmark plans runs without a negative prompt")
    count = len(config.prompts)
    size = config.max_batch_size or count
    chunks = [min(size, count - start) for start in range(0, count, size)]
    injecting = max(config.feature_injection_steps, config.attention_injection_steps)
    batches = []
    for step in range(config.steps):
        for index, k in enumerate(chunks):
            with_source = step < injecting and index == 0
            batches.append(2 * k + with_source)
    return batches


def public_calls(prompts: int, steps: int) -> int:
    """UNet calls of the public implementations for ``prompts`` prompts of ``steps`` sampling steps."""
    return PUBLIC_INVERSION_STEPS + PUBLIC_RECONSTRUCTION_STEPS + steps * prompts


def public_rows(prompts: int, steps: int) -> int:
    """UNet rows of the public implementations; the inversion is counted once, shared by all prompts."""
    return PUBLIC_INVERSION_STEPS + PUBLIC_RECONSTRUCTION_STEPS + PUBLIC_ROWS_PER_STEP * steps * prompts
