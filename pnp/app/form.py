"""The translation form: every input's name, kind, default, bounds, choices and description, in form order.

One table for the two forms a person fills in: the Cog predictor's (Replicate's web form and API)
and the local web UI's (``pnp.app.ui``). ``predict.py`` has to repeat these values as literals in its
``Input()`` arguments, because ``cog build`` reads them without running Python;
tests/test_form.py parses ``predict.py`` and fails if any literal differs from this table. The
UI builds its fields from the table directly. Torch-free.

Names are the forms' own; ``param`` is the pipeline parameter each input sets (a ``PnPConfig``
field, the seed, an ``OutputOptions`` field), which ``ConfigError.param`` names. ``form_inputs``
goes the other way, for clients of a running predictor (the evaluation's HTTP and Replicate
backends), so that a server computes exactly what the local pipeline would.
"""

from __future__ import annotations

from dataclasses import dataclass

from pnp.config import ConfigError, PnPConfig

KINDS = ("image", "file", "text", "int", "float", "bool")
# The form takes several prompts in one text field, separated by this.
PROMPT_SEPARATOR = ";"
# PnPConfig fields the form does not offer: they bound memory and leave the results unchanged.
NOT_ON_FORM = ("max_batch_size",)
# The form's resolution for "the model's own size" (PnPConfig's None): a number among the choices,
# so that the form stays a static list that cog build can read and Replicate's page can show.
MODEL_RESOLUTION = 0


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


FORM_INPUTS = (
    FormInput(
        "input_image", "image", None, param="image",
        description="Image to translate (PNG, JPEG, WebP, ...). It is resized so that its short side is `resolution` pixels. Leave it empty to generate the source image from `generation_prompt` instead.",
    ),
    FormInput(
        "generation_prompt", "text", "", param="generation_prompt",
        description="Generate the source image from this prompt instead of uploading one; the generated image is returned first. When set, `input_image` is ignored.",
    ),
    FormInput(
        "translation_prompts", "text", "A photo of a robot horse", param="prompt",
        description="What the output should show, keeping the layout of the source, e.g. 'a photo of a robot horse'. Separate several prompts with ';' to get one output each, at most 16 per prediction; surrounding spaces and empty prompts are dropped.",
    ),
    FormInput(
        "scale", "float", 10.0, param="guidance_scale", ge=0.0, le=50.0,
        description="Guidance scale of the translation, from 0 to 50: how strongly the outputs follow the translation prompts. The authors recommend 10 to 15; very high values oversaturate.",
    ),
    FormInput(
        "feature_injection_threshold", "float", 0.8, param="feature_injection_threshold", ge=0.0, le=1.0,
        description="Fraction of the sampling steps, counted from the first, in which the source's spatial features are injected, from 0 to 1. Higher keeps more of the source's structure, lower gives the prompt more freedom; the paper uses 0.5 for sketches and segmentation maps.",
    ),
    FormInput(
        "attention_injection_threshold", "float", 0.5, param="attention_injection_threshold", ge=0.0, le=1.0,
        description="Fraction of the sampling steps, counted from the first, in which the source's self-attention queries and keys are injected, from 0 to 1. Higher keeps the source's layout more closely.",
    ),
    FormInput(
        "negative_prompt", "text", "", param="negative_prompt",
        description="What the outputs should move away from, e.g. a description of the source image. Leave empty for no negative prompting.",
    ),
    FormInput(
        "negative_prompt_alpha", "float", 1.0, param="negative_prompt_alpha", ge=0.0, le=1.0,
        description="Weight of plain unconditional guidance against the negative prompt, from 0 to 1: lower pushes harder away from the negative prompt, 1 ignores it. Only used with a negative prompt.",
    ),
    FormInput(
        "negative_prompt_schedule", "text", "linear", param="negative_prompt_schedule",
        choices=("constant", "linear", "exp"),
        description="How `negative_prompt_alpha` changes over the sampling steps: constant keeps it, linear lowers it to 0 by the last step, exp lowers it exponentially. Only used with a negative prompt.",
    ),
    FormInput(
        "num_inference_steps", "int", 50, param="num_inference_steps", ge=1, le=999,
        description="Sampling steps of the translation, and of the source generation in generation mode, from 1 to 999. More steps take longer; 50 is the method's usual setting.",
    ),
    FormInput(
        "num_inversion_steps", "int", None, param="num_inversion_steps", ge=1, le=1000,
        description="DDIM inversion steps of an input image, from 1 to 1000 (ignored in generation mode); leave blank for as many as `num_inference_steps`. More steps invert more exactly but take longer; the original method used 999. The inversion must pass through every sampling step, so with 50 inference steps use 50, 99-100, 197-200, 246-250, 491-500 or 981-1000; other values fail with a message listing the values that work.",
    ),
    FormInput(
        "generation_scale", "float", 5.0, param="generation_guidance_scale", ge=0.0, le=50.0,
        description="Guidance scale of the source generation in generation mode, from 0 to 50; ignored when translating an input image.",
    ),
    FormInput(
        "seed", "int", None, param="seed", ge=0, le=4294967295,
        description="Seed of the noise the source image is generated from, from 0 to 4294967295 (generation mode only; translating an input image is deterministic). Leave blank for a random seed; the seed used is printed in the logs.",
    ),
    FormInput(
        "resolution", "int", 0, param="resolution",
        choices=(0, 128, 192, 256, 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960, 1024),
        description="Short side of the working image and the outputs, in pixels; the long side follows the input image's aspect ratio (at most twice the short side), generated sources are square. 0 (the default) uses the model's own size, at which it works best: 512 for Stable Diffusion 1.x, 768 for 2.1, 1024 for SDXL. Larger is slower.",
    ),
    FormInput(
        "output_format", "text", "png", param="output_format", choices=("png", "webp", "jpg"),
        description="File format of the output images: png is lossless, webp and jpg are smaller (see `output_quality`).",
    ),
    FormInput(
        "output_quality", "int", 90, param="output_quality", ge=1, le=100,
        description="Quality of webp and jpg outputs, from 1 (smallest files) to 100 (best); not relevant for png outputs.",
    ),
    FormInput(
        "disable_safety_checker", "bool", False, param="disable_safety_checker",
        description="Turn off the safety checker, which replaces outputs it judges not safe for work with black images (the logs say which). Only has an effect when the model's weights include the checker; API use only.",
    ),
    FormInput(
        "feature_maps", "bool", False, param="feature_maps",
        description="Also return the paper's PCA visualisations of the source's and the outputs' decoder features at five timesteps, as one labelled grid per map after the outputs: conv1 and conv2 of up_blocks.1.resnets.1, then the queries, keys and self-attention maps of up_blocks.1.attentions.1.transformer_blocks.0.attn1. Similar colours mean similar features; the outputs are unchanged.",
    ),
    FormInput(
        "lora_weights", "file", None, param="lora_weights",
        description="A LoRA adapter for the model's weights, as a .safetensors file (an upload or a URL), applied to this prediction only. It must be made for the model's architecture (Stable Diffusion 1.x, 2.x or SDXL). Leave empty for none.",
    ),
    FormInput(
        "lora_scale", "float", 0.6, param="lora_scale", ge=0.0, le=1.0,
        description="Weight of the LoRA adapter in `lora_weights`, from 0 (off) to 1 (as trained); ignored without one.",
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


def config_resolution(value: int) -> int | None:
    """The form's resolution as PnPConfig takes it: ``MODEL_RESOLUTION`` is None, the model's own size."""
    return None if value == MODEL_RESOLUTION else value


def join_prompts(prompts: tuple[str, ...]) -> str:
    """The prompts as the form's one text field; a prompt that holds the separator would be split, so it is refused."""
    for prompt in prompts:
        if PROMPT_SEPARATOR in prompt:
            raise ConfigError(
                "prompt",
                f"{prompt!r} contains {PROMPT_SEPARATOR!r}, which the predictor's form reads as the end of a "
                "prompt; rephrase it without one to translate it on a server",
            )
    return f"{PROMPT_SEPARATOR} ".join(prompts)
