"""The timestep grids of DDIM sampling and inversion ("leading" spacing), in plain integers.

Torch-free, so that configuration checks can use it before any model library is imported.
Stable Diffusion schedulers use T = 1000 training timesteps and an offset of 1: n steps visit
t_k = k * (T // n) + 1, so 50 steps give 981, 961, ..., 1.
"""

from __future__ import annotations

NUM_TRAIN_TIMESTEPS = 1000
STEPS_OFFSET = 1
MAX_INVERSION_STEPS = 1000


def leading_timesteps(
    steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, offset: int = STEPS_OFFSET
) -> list[int]:
    """The timesteps of ``steps`` DDIM steps, cleanest first: t_k = k * (T // steps) + offset."""
    stride = num_train_timesteps // steps
    return [k * stride + offset for k in range(steps)]


def sampling_timesteps(
    steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, offset: int = STEPS_OFFSET
) -> list[int]:
    """The timesteps a sampler visits, noisiest first."""
    return leading_timesteps(steps, num_train_timesteps, offset)[::-1]


def inversion_timesteps(
    inversion_steps: int, up_to: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, offset: int = STEPS_OFFSET
) -> list[int]:
    """The timesteps an inversion visits, cleanest first, stopping at ``up_to`` (nothing noisier is used)."""
    return [t for t in leading_timesteps(inversion_steps, num_train_timesteps, offset) if t <= up_to]


def inversion_reaches(inversion_steps: int, steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> bool:
    """Whether an inversion of ``inversion_steps`` steps visits every timestep of ``steps`` sampling steps."""
    needed = leading_timesteps(steps, num_train_timesteps)
    return set(needed) <= set(inversion_timesteps(inversion_steps, max(needed), num_train_timesteps))


def valid_inversion_steps(steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """Every inversion step count that reaches all timesteps of ``steps`` sampling steps."""
    return [m for m in range(steps, MAX_INVERSION_STEPS + 1) if inversion_reaches(m, steps, num_train_timesteps)]
