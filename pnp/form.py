"""The Cog predictor's form: what its inputs are called, and a translation's settings written as form inputs.

``predict.py`` reads the form into a ``PnPConfig`` (and maps error names back with
``FORM_NAMES``); ``form_inputs`` goes the other way, for clients of a running predictor (the
evaluation's HTTP and Replicate backends), so that a server computes exactly what the local
pipeline would. Torch-free.
"""

from __future__ import annotations

from .config import ConfigError, PnPConfig

PROMPT_SEPARATOR = ";"
# Pipeline parameters that the form calls differently; error messages use the form's names.
FORM_NAMES = {
    "prompt": "translation_prompts",
    "guidance_scale": "scale",
    "generation_guidance_scale": "generation_scale",
    "image": "input_image",
}
# PnPConfig fields the form does not offer: they bound memory and leave the results unchanged.
NOT_ON_FORM = ("max_batch_size",)


def form_name(param: str) -> str:
    """The form input's name of a pipeline parameter."""
    return FORM_NAMES.get(param, param)


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
        elif value is None:  # generation_prompt, negative_prompt: the form's blank means "none"
            value = ""
        inputs[form_name(name)] = value
    inputs.update(seed=seed, output_format="png")
    return inputs


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
