"""The one validated configuration of a translation, shared by the CLI, the predictor and the benchmark."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

NEGATIVE_SCHEDULES = ("constant", "linear", "exp")
OUTPUT_FORMATS = ("png", "webp", "jpg")
MAX_PROMPTS = 16
MAX_SAMPLING_STEPS = 999
MAX_INVERSION_STEPS = 1000
MIN_RESOLUTION, MAX_RESOLUTION = 128, 1024


class ConfigError(ValueError):
    """A parameter has a value the method cannot use; the message names it and what is allowed."""


@dataclass
class PnPConfig:
    """Everything that decides what a translation computes.

    The source is either an input image (passed separately) or ``generation_prompt``.
    """

    # Target prompts: one output image each.
    prompts: list[str] = field(default_factory=lambda: ["A photo of a robot horse"])
    # If set, the source image is generated from this prompt instead of inverting an input image.
    generation_prompt: str = ""
    # Sampling steps of the translation (and of the generation, in generation mode).
    steps: int = 50
    # DDIM inversion steps for a real image (None: as many as sampling steps); must put a
    # latent on every sampling timestep. Unused in generation mode.
    inversion_steps: int | None = None
    # Classifier-free guidance scale of the translation.
    scale: float = 10.0
    # Classifier-free guidance scale of the source generation.
    generation_scale: float = 5.0
    # Fraction of sampling steps with residual (conv2) feature injection.
    feature_injection_threshold: float = 0.8
    # Fraction of sampling steps with self-attention Q/K injection.
    attention_injection_threshold: float = 0.5
    # Pushed away from during translation; empty means no negative prompting.
    negative_prompt: str = ""
    # Weight of the unconditional term against the negative one: 1 ignores the negative prompt.
    negative_prompt_alpha: float = 1.0
    negative_prompt_schedule: str = "linear"
    # Short side of the working image in pixels (sides are rounded to multiples of 64).
    resolution: int = 512
    # Seed of the initial noise of a generated source; real-image translation is deterministic.
    seed: int = 0
    # Most target prompts in one UNet call; None puts all prompts in one call.
    max_batch_size: int | None = None
    # How output images are written: png, webp or jpg, and the quality of lossy formats (1-100).
    output_format: str = "png"
    output_quality: int = 90

    def __post_init__(self) -> None:
        self.prompts = [p.strip() for p in self.prompts if p and p.strip()]
        self.generation_prompt = self.generation_prompt.strip()
        self.negative_prompt = self.negative_prompt.strip()
        if self.inversion_steps is None:
            self.inversion_steps = self.steps
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for the first parameter whose value cannot be used."""
        if not self.prompts:
            raise ConfigError("prompts: give at least one non-empty translation prompt")
        if len(self.prompts) > MAX_PROMPTS:
            raise ConfigError(
                f"prompts: {len(self.prompts)} prompts given, at most {MAX_PROMPTS} are allowed per call"
            )
        _check_int("steps", self.steps, 1, MAX_SAMPLING_STEPS)
        _check_int("inversion_steps", self.inversion_steps, 1, MAX_INVERSION_STEPS)
        if not self.generation_prompt and self.inversion_steps not in valid_inversion_steps(self.steps):
            raise ConfigError(
                f"inversion_steps: {self.inversion_steps} inversion steps do not reach every one of the "
                f"{self.steps} sampling timesteps; with steps={self.steps} use one of "
                f"{describe_ranges(valid_inversion_steps(self.steps))}"
            )
        _check_float("scale", self.scale, 0.0, 50.0)
        _check_float("generation_scale", self.generation_scale, 0.0, 50.0)
        _check_float("feature_injection_threshold", self.feature_injection_threshold, 0.0, 1.0)
        _check_float("attention_injection_threshold", self.attention_injection_threshold, 0.0, 1.0)
        _check_float("negative_prompt_alpha", self.negative_prompt_alpha, 0.0, 1.0)
        if self.negative_prompt_schedule not in NEGATIVE_SCHEDULES:
            raise ConfigError(
                f"negative_prompt_schedule: {self.negative_prompt_schedule!r} is not one of "
                f"{', '.join(NEGATIVE_SCHEDULES)}"
            )
        _check_int("resolution", self.resolution, MIN_RESOLUTION, MAX_RESOLUTION)
        if self.resolution % 64:
            raise ConfigError(f"resolution: {self.resolution} is not a multiple of 64")
        _check_int("seed", self.seed, 0, 2**32 - 1)
        if self.max_batch_size is not None:
            _check_int("max_batch_size", self.max_batch_size, 1, MAX_PROMPTS)
        if self.output_format not in OUTPUT_FORMATS:
            raise ConfigError(f"output_format: {self.output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}")
        _check_int("output_quality", self.output_quality, 1, 100)

    @property
    def feature_injection_steps(self) -> int:
        """Number of leading sampling steps with residual feature injection."""
        return int(self.steps * self.feature_injection_threshold)

    @property
    def attention_injection_steps(self) -> int:
        """Number of leading sampling steps with attention Q/K injection."""
        return int(self.steps * self.attention_injection_threshold)


def valid_inversion_steps(steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """Inversion step counts whose timesteps include every sampling timestep of ``steps`` steps.

    Both schedules use "leading" spacing, t_k = k * (T // n) + offset; the inversion grid must
    contain every sampling timestep. Inversion never runs past the noisiest one.
    """
    stride = num_train_timesteps // steps
    needed = [k * stride for k in range(steps)]
    valid = []
    for m in range(steps, MAX_INVERSION_STEPS + 1):
        m_stride = num_train_timesteps // m
        if needed[-1] <= (m - 1) * m_stride and all(t % m_stride == 0 for t in needed):
            valid.append(m)
    return valid


def describe_ranges(values: list[int]) -> str:
    """Write sorted integers compactly: [50, 99, 100, 197, 198] -> '50, 99-100, 197-198'."""
    parts, start = [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(v) if v == start else f"{start}-{v}")
            start = None
    return ", ".join(parts)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected a whole number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value} is out of range, use a value from {low} to {high}")


def _check_float(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value} is out of range, use a value from {low:g} to {high:g}")
