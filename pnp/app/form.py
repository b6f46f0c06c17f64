"""The translation form: every input's name, kind, default, bounds, choices and description, and its one parser.

One table for the two forms a person fills in: the Cog predictor's (Replicate's web form and API)
and the local web UI's (``pnp.app.ui``). Its defaults, bounds and choices are computed from the
configuration's (``PnPConfig``, ``pnp.config.RANGES``, ``OutputOptions``, the LoRA scale range), so
the table cannot disagree with what the pipeline accepts. ``predict.py`` has to repeat these values
as literals in its ``Input()`` arguments, because ``cog build`` reads them without running Python;
tests/app/test_form.py parses ``predict.py`` and fails if any literal differs from this table. The
UI builds its fields from the table directly. Torch-free.

``parse_form`` reads a filled-in form the same way for both: the predictor and the UI differ only
in how they read the image file. Names are the form's own; ``param`` is the pipeline parameter each
input sets (a ``PnPConfig`` field, the seed, an ``OutputOptions`` field), which
``ConfigError.param`` names. ``form_inputs`` goes the other way, for clients of a running predictor
(the evaluation's HTTP and Replicate backends), so that a server computes exactly what the local
pipeline would.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, fields

from PIL import Image

from pnp.config import (
    MAX_PROMPTS,
    NEGATIVE_SCHEDULES,
    RANGES,
    RESOLUTION_MULTIPLE,
    ConfigError,
    PnPConfig,
    check_float,
    check_seed,
    describe_ranges,
)
from pnp.method.timesteps import valid_inversion_steps
from pnp.outputs import OUTPUT_FORMATS, QUALITY_RANGE, OutputOptions
from pnp.pipelines.lora import LORA_SCALE_RANGE

KINDS = ("image", "file", "text", "int", "float", "bool")
# The form takes several prompts in one text field, one output each: separated by ';' (as the public
# Replicate model of the method takes them) or by line breaks (as a text box invites).
PROMPT_SEPARATORS = (";", "\n")
# PnPConfig fields the form does not offer: they bound memory and leave the results unchanged.
NOT_ON_FORM = ("max_batch_size",)
# The form's resolution for "the model's own size" (PnPConfig's None): a number among the choices,
# so that the form stays a static list that cog build can read and Replicate's page can show.
MODEL_RESOLUTION = 0
# The LoRA scale the form starts from, as Replicate's own SDXL model offers it.
FORM_LORA_SCALE = 0.6

_CONFIG = PnPConfig()
_OUTPUTS = OutputOptions()


@dataclass(frozen=True)
class FormInput:
    """One input of the form. A default of None means the input may be left blank."""

    name: str
    kind: str
    default: object
    description: str
    param: str
    ge: float | None = None
    le: float | None = None
    choices: tuple | None = None

    @property
    def optional(self) -> bool:
        """Whether the input may be left blank (its default is blank)."""
        return self.default is None


def _ranged(name: str, kind: str, param: str, default: object, low_high: tuple, description: str) -> FormInput:
    """An input bounded by ``low_high``; ``description`` may name them as {low} and {high}."""
    low, high = low_high
    words = {"low": _number(low), "high": _number(high)}
    return FormInput(name, kind, default, description.format(**words), param, ge=low, le=high)


def _number(value: float) -> str:
    """A bound as a description writes it: 50.0 as 50, whole numbers in full."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _either(values: list[str]) -> str:
    """'a, b or c'."""
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"


_STEPS = _CONFIG.num_inference_steps
_INVERSION_STEPS = _either(describe_ranges(valid_inversion_steps(_STEPS)).split(", "))
_MIN_SIDE, _MAX_SIDE = RANGES["resolution"]

FORM_INPUTS = (
    FormInput(
        "input_image",
        "image",
        None,
        param="image",
        description="Image to translate (PNG, JPEG, WebP, ...). It is resized so that its short side is `resolution` pixels. Leave it empty to generate the source image from `generation_prompt` instead.",
    ),
    FormInput(
        "generation_prompt",
        "text",
        "",
        param="generation_prompt",
        description="Generate the source image from this prompt instead of uploading one; the generated image is returned first. When set, `input_image` is ignored.",
    ),
    FormInput(
        "translation_prompts",
        "text",
        "; ".join(_CONFIG.prompt),
        param="prompt",
        description=f"What the output should show, keeping the layout of the source, e.g. 'a photo of a robot horse'. Separate several prompts with ';' or line breaks to get one output each, at most {MAX_PROMPTS} per prediction; surrounding spaces and empty prompts are dropped.",
    ),
    _ranged(
        "scale",
        "float",
        "guidance_scale",
        _CONFIG.guidance_scale,
        RANGES["guidance_scale"],
        "Guidance scale of the translation, from {low} to {high}: how strongly the outputs follow the translation prompts. The authors recommend 10 to 15; very high values oversaturate.",
    ),
    _ranged(
        "feature_injection_threshold",
        "float",
        "feature_injection_threshold",
        _CONFIG.feature_injection_threshold,
        RANGES["feature_injection_threshold"],
        "Fraction of the sampling steps, counted from the first, in which the source's spatial features are injected, from {low} to {high}. Higher keeps more of the source's structure, lower gives the prompt more freedom; the paper uses 0.5 for sketches and segmentation maps.",
    ),
    _ranged(
        "attention_injection_threshold",
        "float",
        "attention_injection_threshold",
        _CONFIG.attention_injection_threshold,
        RANGES["attention_injection_threshold"],
        "Fraction of the sampling steps, counted from the first, in which the source's self-attention queries and keys are injected, from {low} to {high}. Higher keeps the source's layout more closely.",
    ),
    FormInput(
        "negative_prompt",
        "text",
        "",
        param="negative_prompt",
        description="What the outputs should move away from, e.g. a description of the source image. Leave empty for no negative prompting.",
    ),
    _ranged(
        "negative_prompt_alpha",
        "float",
        "negative_prompt_alpha",
        _CONFIG.negative_prompt_alpha,
        RANGES["negative_prompt_alpha"],
        "Weight of plain unconditional guidance against the negative prompt, from {low} to {high}: lower pushes harder away from the negative prompt, 1 ignores it. Only used with a negative prompt.",
    ),
    FormInput(
        "negative_prompt_schedule",
        "text",
        _CONFIG.negative_prompt_schedule,
        param="negative_prompt_schedule",
        choices=NEGATIVE_SCHEDULES,
        description="How `negative_prompt_alpha` changes over the sampling steps: constant keeps it, linear lowers it to 0 by the last step, exp lowers it exponentially. Only used with a negative prompt.",
    ),
    _ranged(
        "num_inference_steps",
        "int",
        "num_inference_steps",
        _STEPS,
        RANGES["num_inference_steps"],
        f"Sampling steps of the translation, and of the source generation in generation mode, from {{low}} to {{high}}. More steps take longer; {_STEPS} is the method's usual setting.",
    ),
    _ranged(
        "num_inversion_steps",
        "int",
        "num_inversion_steps",
        None,
        RANGES["num_inversion_steps"],
        f"DDIM inversion steps of an input image, from {{low}} to {{high}} (ignored in generation mode); leave blank for as many as `num_inference_steps`. More steps invert more exactly but take longer; the original method used 999. The inversion must pass through every sampling step, so with {_STEPS} inference steps use {_INVERSION_STEPS}; other values fail with a message listing the values that work.",
    ),
    _ranged(
        "generation_scale",
        "float",
        "generation_guidance_scale",
        _CONFIG.generation_guidance_scale,
        RANGES["generation_guidance_scale"],
        "Guidance scale of the source generation in generation mode, from {low} to {high}; ignored when translating an input image.",
    ),
    _ranged(
        "seed",
        "int",
        "seed",
        None,
        RANGES["seed"],
        "Seed of the noise the source image is generated from, from {low} to {high} (generation mode only; translating an input image is deterministic). Leave blank for a random seed; the seed used is printed in the logs.",
    ),
    FormInput(
        "resolution",
        "int",
        MODEL_RESOLUTION,
        param="resolution",
        choices=(MODEL_RESOLUTION, *range(_MIN_SIDE, _MAX_SIDE + 1, RESOLUTION_MULTIPLE)),
        description=f"Short side of the working image and the outputs, in pixels; the long side follows the input image's aspect ratio (at most twice the short side), generated sources are square. {MODEL_RESOLUTION} (the default) uses the model's own size, at which it works best: 512 for Stable Diffusion 1.x, 768 for 2.1, 1024 for SDXL. Larger is slower.",
    ),
    FormInput(
        "output_format",
        "text",
        _OUTPUTS.output_format,
        param="output_format",
        choices=OUTPUT_FORMATS,
        description="File format of the output images: png is lossless, webp and jpg are smaller (see `output_quality`).",
    ),
    _ranged(
        "output_quality",
        "int",
        "output_quality",
        _OUTPUTS.output_quality,
        QUALITY_RANGE,
        "Quality of webp and jpg outputs, from {low} (smallest files) to {high} (best); not relevant for png outputs.",
    ),
    FormInput(
        "disable_safety_checker",
        "bool",
        False,
        param="disable_safety_checker",
        description="Turn off the safety checker, which replaces outputs it judges not safe for work with black images (the logs say which). Only has an effect when the model's weights include the checker; API use only.",
    ),
    FormInput(
        "feature_maps",
        "bool",
        False,
        param="feature_maps",
        description="Also return the paper's PCA visualisations of the source's and the outputs' decoder features at five timesteps, as one labelled grid per map after the outputs: conv1 and conv2 of up_blocks.1.resnets.1, then the queries, keys and self-attention maps of up_blocks.1.attentions.1.transformer_blocks.0.attn1. Similar colours mean similar features; the outputs are unchanged.",
    ),
    FormInput(
        "lora_weights",
        "file",
        None,
        param="lora_weights",
        description="A LoRA adapter for the model's weights, as a .safetensors file (an upload or a URL), applied to this prediction only. It must be made for the model's architecture (Stable Diffusion 1.x, 2.x or SDXL). Leave empty for none.",
    ),
    _ranged(
        "lora_scale",
        "float",
        "lora_scale",
        FORM_LORA_SCALE,
        LORA_SCALE_RANGE,
        "Weight of the LoRA adapter in `lora_weights`, from {low} (off) to {high} (as trained); ignored without one.",
    ),
)


def form_input(name: str) -> FormInput:
    """The input called ``name``; KeyError if the form has none."""
    for spec in FORM_INPUTS:
        if spec.name == name:
            return spec
    raise KeyError(name)


def form_name(param: str) -> str:
    """The form input that sets pipeline parameter ``param`` (``param`` itself if none does): what errors name."""
    return next((spec.name for spec in FORM_INPUTS if spec.param == param), param)


# --- Reading a filled-in form ---

# The form's inputs that PnPConfig takes as they are (under their pipeline names); the prompts and the
# resolution are read from the form's own forms of them.
CONFIG_INPUTS = tuple(
    spec.name
    for spec in FORM_INPUTS
    if spec.param in {f.name for f in fields(PnPConfig)} and spec.param not in ("prompt", "resolution")
)


@dataclass(frozen=True)
class Request:
    """A run the form asks for, checked: the configuration, the source image (None in generation mode), the seed,
    how outputs are written, what else is asked for, and notes worth telling the user."""

    config: PnPConfig
    image: Image.Image | None
    seed: int
    options: OutputOptions
    feature_maps: bool = False
    disable_safety_checker: bool = False
    lora_scale: float = FORM_LORA_SCALE
    notes: tuple[str, ...] = ()


def parse_form(
    values: dict, model_resolution: int | None, read_image: Callable[[object, int | None], Image.Image]
) -> Request:
    """Check a filled-in form (values by input name) before any model work; ConfigError names the input to change.

    Inputs left out take the form's defaults. ``read_image(value, resolution)`` reads ``input_image``
    (the predictor accepts only files the request brought). ``model_resolution`` is the model's own
    size, which the form's resolution 0 stands for; without it the image is read at its own size and
    the pipeline resizes it.

    ``translation_prompts`` holds prompts separated by ';' or line breaks (empty ones are skipped).
    Whole numbers may come as floats (2.0: JSON's numbers, and sliders) or as text (the fields that
    may be left blank, drop-downs); a blank seed picks a random one. Text inputs must hold text,
    check boxes true or false.
    """
    values = {spec.name: spec.default for spec in FORM_INPUTS} | values
    values = {name: whole_number(value) if form_input(name).kind == "int" else value for name, value in values.items()}
    try:
        for name, value in values.items():
            _check_kind(name, value)
        settings = {form_input(name).param: values[name] for name in CONFIG_INPUTS}
        config = PnPConfig(
            prompt=split_prompts(values["translation_prompts"] or ""),
            resolution=config_resolution(values["resolution"]),
            **settings,
        )
        if model_resolution is not None:
            config = config.resolved(model_resolution)
        options = OutputOptions(values["output_format"], values["output_quality"])
        lora_scale = check_float("lora_scale", values["lora_scale"], *LORA_SCALE_RANGE)
        chosen = values["seed"] is None
        seed = random.randint(*RANGES["seed"]) if chosen else check_seed(values["seed"])
        notes, image = [], None
        if config.generating:
            notes.append(f"The source image is generated with {'random ' if chosen else ''}seed {seed}")
            if values["input_image"] is not None:
                notes.append("input_image is ignored: generation_prompt is set")
        elif values["input_image"] is not None:
            image = read_image(values["input_image"], config.resolution)
        else:
            raise ConfigError("image", "give an input image or a generation prompt")
    except ConfigError as err:  # and its kinds (ImageError): named as the form names the input
        raise type(err)(form_name(err.param), err.reason) from None
    return Request(
        config,
        image,
        seed,
        options,
        bool(values["feature_maps"]),
        bool(values["disable_safety_checker"]),
        lora_scale,
        tuple(notes),
    )


def split_prompts(text: str) -> list[str]:
    """The prompts in the form's one text field: separated by ';' or line breaks, empty ones dropped."""
    return [prompt for prompt in re.split("|".join(map(re.escape, PROMPT_SEPARATORS)), text) if prompt.strip()]


def whole_number(value: object) -> object:
    """A whole-number input as an int: 2.0 and "2" are 2, blank text is None; anything else is left for the check
    to refuse, naming the input (the Cog server's schema admits 2.0 as an integer; text boxes send text)."""
    if isinstance(value, str):
        text = value.strip()
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else (text or None)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _check_kind(name: str, value: object) -> None:
    kind = form_input(name).kind
    if kind == "text" and not (value is None or isinstance(value, str)):
        raise ConfigError(name, f"{value!r} is not text")
    if kind == "bool" and not isinstance(value, bool):
        raise ConfigError(name, f"{value!r} is neither true nor false")


def config_resolution(value: int) -> int | None:
    """The form's resolution as PnPConfig takes it: ``MODEL_RESOLUTION`` is None, the model's own size."""
    return None if value == MODEL_RESOLUTION else value


# --- Filling in the form for a running predictor ---


def form_inputs(config: PnPConfig, seed: int) -> dict:
    """The form inputs that make the predictor translate as ``config`` and ``seed`` do locally, into lossless PNGs.

    The source (``input_image``) is not included: it is a file, which each client sends its own way.
    """
    inputs = {}
    for name, value in config.as_kwargs().items():
        if name in NOT_ON_FORM:
            continue
        if name == "prompt":
            value = join_prompts(value)
        elif value is None:  # generation_prompt, negative_prompt, resolution: the form's default means "none"
            value = form_input(form_name(name)).default
        inputs[form_name(name)] = value
    inputs.update(seed=seed, output_format="png")
    return inputs


def join_prompts(prompts: tuple[str, ...]) -> str:
    """The prompts as the form's one text field; a prompt that holds a separator would be split, so it is refused."""
    for prompt in prompts:
        if any(separator in prompt for separator in PROMPT_SEPARATORS):
            raise ConfigError(
                "prompt",
                f"{prompt!r} contains ';' or a line break, which the predictor's form reads as the end of a "
                "prompt; rephrase it without one to translate it on a server",
            )
    return "; ".join(prompts)
