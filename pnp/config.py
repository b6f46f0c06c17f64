"""The one validated, immutable configuration of a translation, shared by every entry point.

Field names are the pipeline's ``__call__`` argument names (diffusers' own where one exists), so
an error names the argument a Python user passed; the command line and the Cog predictor map
``ConfigError.param`` to their own names. Torch-free: the command line validates with it before
any model library is imported.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from dataclasses import dataclass, fields, replace

from pnp.method.timesteps import MAX_INVERSION_STEPS, inversion_reaches, valid_inversion_steps

NEGATIVE_SCHEDULES = ("constant", "linear", "exp")
MAX_PROMPTS = 16
# The text encoder reads 77 CLIP tokens (75 of text): a few hundred characters of English, at 4 to 5
# characters a token; the pipeline warns when a prompt is longer and says what was kept. Prompts
# are tokenized whole before that cut, so text far longer than anyone writes is refused here,
# before any work: 4 MB of prompt held a server for 92 s and took its worker to 3.5 GB (issue 17).
MAX_PROMPT_LENGTH = 2000
MAX_SAMPLING_STEPS = 999
MIN_RESOLUTION, MAX_RESOLUTION = 128, 1024
RESOLUTION_MULTIPLE = 64
MAX_GUIDANCE_SCALE = 50.0
MAX_SEED = 2**32 - 1
# A mask grows by at most 8 latent pixels (64 image pixels at Stable Diffusion's 8x): more is a new mask.
MAX_MASK_DILATION = 8
# The paste's feathered edge is at most 64 pixels wide, a tenth of a 512-pixel image's side.
MAX_MASK_FEATHER = 64
# Every bounded number's range, both ends allowed: checked here, and offered by the forms (``pnp.app.form``).
RANGES = {
    "num_inference_steps": (1, MAX_SAMPLING_STEPS),
    "num_inversion_steps": (1, MAX_INVERSION_STEPS),
    "guidance_scale": (0.0, MAX_GUIDANCE_SCALE),
    "generation_guidance_scale": (0.0, MAX_GUIDANCE_SCALE),
    "feature_injection_threshold": (0.0, 1.0),
    "attention_injection_threshold": (0.0, 1.0),
    "negative_prompt_alpha": (0.0, 1.0),
    "resolution": (MIN_RESOLUTION, MAX_RESOLUTION),
    "max_batch_size": (1, MAX_PROMPTS),
    "mask_blend_threshold": (0.0, 1.0),
    "mask_dilation": (0, MAX_MASK_DILATION),
    "mask_feather": (0, MAX_MASK_FEATHER),
    "seed": (0, MAX_SEED),  # not a PnPConfig field: the generator's (``check_seed``)
}


# The settings of masked editing: they act only with a mask (which the pipeline takes apart, as the image).
MASK_SETTINGS = ("mask_blend_threshold", "mask_dilation", "mask_paste", "mask_feather")


class ConfigError(ValueError):
    """A parameter has a value the method cannot use.

    ``param`` is the parameter's name and ``reason`` what is wrong and what is allowed; the
    message is "param: reason".
    """

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param}: {reason}")
        self.param = param
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.param, self.reason)


@dataclass(frozen=True)
class PnPConfig:
    """Everything that decides what a translation computes, checked when it is made.

    The source is an input image (passed to the pipeline separately) or ``generation_prompt``.
    Values of the wrong type raise ConfigError; nothing is silently converted, except that a
    single prompt string becomes a one-prompt tuple and surrounding spaces are stripped.
    """

    # Target prompts: one output image each.
    prompt: tuple[str, ...] = ("A photo of a robot horse",)
    # If set, the source image is generated from this prompt instead of inverting an input image.
    generation_prompt: str | None = None
    # Sampling steps of the translation (and of the generation, in generation mode).
    num_inference_steps: int = 50
    # DDIM inversion steps of a real image; None means as many as the sampling steps. Must put a
    # latent on every sampling timestep. Unused in generation mode.
    num_inversion_steps: int | None = None
    # Classifier-free guidance scale of the translation.
    guidance_scale: float = 10.0
    # Classifier-free guidance scale of the source generation.
    generation_guidance_scale: float = 5.0
    # Fraction of sampling steps with residual (conv2) feature injection.
    feature_injection_threshold: float = 0.8
    # Fraction of sampling steps with self-attention Q/K injection.
    attention_injection_threshold: float = 0.5
    # Pushed away from during translation; None (or empty) means no negative prompting.
    negative_prompt: str | None = None
    # Weight of the unconditional term against the negative one: 1 ignores the negative prompt.
    negative_prompt_alpha: float = 1.0
    negative_prompt_schedule: str = "linear"
    # Short side of the working image in pixels (sides are rounded to multiples of 64); None for
    # the model's own size (``resolved``), which only the loaded model knows.
    resolution: int | None = None
    # Most target prompts in one UNet call; None puts all prompts in one call.
    max_batch_size: int | None = None
    # Masked editing (with a mask image, passed to the pipeline separately; ``pnp.method.mask``).
    # Fraction of sampling steps, from the first, after which each target's latents outside the mask are
    # replaced by the source's at the same timestep. 1 blends to the end, as Blended Latent Diffusion does:
    # the background stays the source's latent; on the toy model it keeps the most background and the
    # edit rate does not rise with earlier stops (docs/masks.md).
    mask_blend_threshold: float = 1.0
    # Latent pixels the mask grows by, in every direction, after it is taken to latent resolution.
    mask_dilation: int = 0
    # Paste the source image's own pixels outside the mask after decoding, so the background is exact.
    mask_paste: bool = False
    # Width in pixels of the paste's soft edge outside the mask (0: a hard edge).
    mask_feather: int = 8

    def __post_init__(self) -> None:
        def set_(name, value):  # the one place a frozen field is written: while it is being made
            object.__setattr__(self, name, value)

        set_("prompt", _prompts(self.prompt))
        set_("generation_prompt", _optional_text("generation_prompt", self.generation_prompt))
        set_("negative_prompt", _optional_text("negative_prompt", self.negative_prompt))
        set_(
            "num_inference_steps",
            check_int("num_inference_steps", self.num_inference_steps, *RANGES["num_inference_steps"]),
        )
        if self.num_inversion_steps is None:
            set_("num_inversion_steps", self.num_inference_steps)
        set_(
            "num_inversion_steps",
            check_int("num_inversion_steps", self.num_inversion_steps, *RANGES["num_inversion_steps"]),
        )
        if not self.generation_prompt and not inversion_reaches(self.num_inversion_steps, self.num_inference_steps):
            raise ConfigError(
                "num_inversion_steps",
                f"{self.num_inversion_steps} inversion steps do not reach every one of the "
                f"{self.num_inference_steps} sampling timesteps; with {self.num_inference_steps} sampling steps "
                f"use one of {describe_ranges(valid_inversion_steps(self.num_inference_steps))}",
            )
        for name in (
            "guidance_scale",
            "generation_guidance_scale",
            "feature_injection_threshold",
            "attention_injection_threshold",
            "negative_prompt_alpha",
            "mask_blend_threshold",
        ):
            set_(name, check_float(name, getattr(self, name), *RANGES[name]))
        set_(
            "negative_prompt_schedule",
            check_choice("negative_prompt_schedule", self.negative_prompt_schedule, NEGATIVE_SCHEDULES),
        )
        if self.resolution is not None:
            set_("resolution", check_int("resolution", self.resolution, *RANGES["resolution"]))
            if self.resolution % RESOLUTION_MULTIPLE:
                raise ConfigError("resolution", f"{self.resolution} is not a multiple of {RESOLUTION_MULTIPLE}")
        if self.max_batch_size is not None:
            set_("max_batch_size", check_int("max_batch_size", self.max_batch_size, *RANGES["max_batch_size"]))
        for name in ("mask_dilation", "mask_feather"):
            set_(name, check_int(name, getattr(self, name), *RANGES[name]))
        if not isinstance(self.mask_paste, bool):
            raise ConfigError("mask_paste", f"expected True or False, got {_shown(self.mask_paste)}")

    @property
    def generating(self) -> bool:
        """Whether the source is generated from ``generation_prompt`` rather than inverted from an image."""
        return self.generation_prompt is not None

    @property
    def feature_injection_steps(self) -> int:
        """Number of leading sampling steps with residual feature injection."""
        return self._leading_steps(self.feature_injection_threshold)

    @property
    def attention_injection_steps(self) -> int:
        """Number of leading sampling steps with attention Q/K injection."""
        return self._leading_steps(self.attention_injection_threshold)

    @property
    def mask_blend_steps(self) -> int:
        """Number of leading sampling steps after which a masked target is blended with its source."""
        return self._leading_steps(self.mask_blend_threshold)

    def _leading_steps(self, fraction: float) -> int:
        """The leading sampling steps a fraction of them stands for: rounded down."""
        return int(self.num_inference_steps * fraction)

    def resolved(self, model_resolution: int) -> PnPConfig:
        """This configuration with the model's own size, ``model_resolution``, where it has no resolution."""
        if self.resolution is not None:
            return self
        try:
            return replace(self, resolution=model_resolution)
        except ConfigError as err:
            raise ConfigError(
                "resolution",
                f"the model's own size, {model_resolution} px, cannot be used ({err.reason}); give a resolution",
            ) from None

    def as_kwargs(self) -> dict:
        """The fields as keyword arguments of ``PnPPipeline.__call__``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check_seed(seed: object) -> int:
    """A seed of a generated source's noise: a whole number from 0 to 2**32 - 1."""
    return check_int("seed", seed, *RANGES["seed"])


def describe_ranges(values: list[int]) -> str:
    """Write sorted integers compactly: [50, 99, 100, 197, 198] -> '50, 99-100, 197-198'."""
    parts, start = [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(v) if v == start else f"{start}-{v}")
            start = None
    return ", ".join(parts)


def _prompts(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
        raise ConfigError("prompt", f"expected a string or a list of strings, got {_shown(value)}")
    if not value:
        raise ConfigError("prompt", "give at least one translation prompt")
    if len(value) > MAX_PROMPTS:
        raise ConfigError("prompt", f"{len(value)} prompts given, at most {MAX_PROMPTS} are allowed per call")
    prompts = tuple(check_text("prompt", p, f"prompt {i + 1} of {len(value)}") for i, p in enumerate(value))
    empty = [i + 1 for i, p in enumerate(prompts) if not p]
    if empty:
        raise ConfigError("prompt", f"prompt {empty[0]} of {len(prompts)} is empty; every prompt needs some text")
    return prompts


def _optional_text(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(name, f"expected a string or None, got {_shown(value)}")
    return check_text(name, value, "it") or None


def check_text(name: str, text: str, label: str) -> str:
    """``text`` without surrounding spaces if a text encoder can take it, else ConfigError naming ``name``.

    It must be at most ``MAX_PROMPT_LENGTH`` characters long and valid Unicode: no lone surrogates,
    which is what bytes that are not UTF-8 become in a command line's arguments (and what JSON's
    "\\udcff" escapes make). ``label`` names the text in the message ("prompt 2 of 3").
    """
    text = text.strip()
    if len(text) > MAX_PROMPT_LENGTH:
        raise ConfigError(
            name,
            f"{label} is {len(text)} characters long, more than the {MAX_PROMPT_LENGTH} "
            "allowed; the text encoder reads only its first 77 tokens (a few hundred "
            "characters): shorten it",
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ConfigError(
            name,
            f"{label} is not valid text: character {err.start + 1} is {text[err.start]!r}, a "
            "lone surrogate, as bytes that are not UTF-8 become; give the text in UTF-8",
        ) from None
    return text


def _shown(value: object) -> str:
    """``repr(value)`` shortened (long strings and lists elided): a message stays one line whatever was passed."""
    return reprlib.repr(value)


def check_int(name: str, value: object, low: int, high: int) -> int:
    """``value`` as an int if it is a whole number (not a bool) from ``low`` to ``high``, else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(name, f"expected a whole number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(name, f"{value} is out of range, use a value from {low} to {high}")
    return int(value)


def check_float(name: str, value: object, low: float, high: float) -> float:
    """``value`` as a float if it is a finite real number (not a bool) from ``low`` to ``high``, else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(name, f"expected a number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(name, f"{value} is out of range, use a value from {low:g} to {high:g}")
    return float(value)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else ConfigError."""
    if value not in choices:
        raise ConfigError(name, f"{value!r} is not one of {', '.join(choices)}")
    return value
