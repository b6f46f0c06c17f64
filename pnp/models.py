"""Where a pipeline's weights come from: local folders, the model hub, random test models, and clear errors.

``PnPPipeline.from_pretrained`` uses these rules; the command line and the web UI open models by
name with ``open_model``, which also knows the random-weight test models. Bundled models (the toy
model, trained on ``pnp.toy.world``) ship inside the package and load by name everywhere.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from .devices import default_device, default_dtype, parse_dtype

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
# Names of the random-weight test models (``pnp.random_models`` builds them); torch-free here for argument checks.
RANDOM_MODELS = ("tiny", "tiny-v", "tiny-sdxl", "random-sd15")
# Models shipped inside the package, by name: diffusers folders that load like any other.
TOY_MODEL = "toy"
BUNDLED_MODELS = {TOY_MODEL: Path(__file__).parent / "toy" / "model"}
# What a UNet may predict; pnp.ddim converts each to noise (torch-free copy of pnp.ddim.PREDICTION_TYPES).
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class ModelError(RuntimeError):
    """The model cannot be loaded or used; the message says how to provide one that can."""


def choose_device_and_dtype(device: str | None, dtype) -> tuple[str, object]:
    """The device (default: CUDA if present) and torch dtype (default: ``pnp.devices.default_dtype``) to load onto."""
    import torch

    device = device or default_device()
    try:
        torch.device(device)
    except RuntimeError:
        raise ModelError(f"device: {device!r} is not a device torch knows; use cpu or cuda") from None
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device: {device} was asked for but no CUDA GPU is available; use --device cpu")
    if isinstance(dtype, str):
        try:
            dtype = parse_dtype(dtype)
        except ValueError as err:
            raise ModelError(str(err)) from None
    return device, dtype or default_dtype(device)


def model_location(model: str | Path) -> str | Path:
    """Where ``model`` loads from: a bundled model's folder for its name (``toy``), else ``model`` itself."""
    return BUNDLED_MODELS.get(model, model) if isinstance(model, str) else model


def loading_options(model: str | Path, safety_checker: bool = True) -> dict:
    """from_pretrained options for ``model``: local folders load offline, with a safety checker only where present.

    A hub id loads without a safety checker unless the caller asks for one: it would otherwise
    add a 1.2 GB download that the translation does not need. ``safety_checker``: whether the
    pipeline has one at all (SDXL's has not).
    """
    local = _local_folder(model)
    no_checker = _NO_CHECKER if safety_checker else {}
    if local is not None:
        has_checker = (local / "safety_checker").is_dir() and (local / "feature_extractor").is_dir()
        options = {"local_files_only": True}
        return options if has_checker else {**options, **no_checker}
    return dict(no_checker)


def _local_folder(model: str | Path) -> Path | None:
    """``model`` as a local folder; None for a hub id; ModelError for a path that names no folder."""
    local = Path(model).expanduser()
    if local.is_dir():
        return local
    if str(model).startswith((".", "/", "~")) or local.exists():
        raise ModelError(f"model folder {local} does not exist; pass a diffusers model folder or a model-hub id")
    return None


def is_sdxl(model: str | Path) -> bool:
    """Whether ``model`` (a local folder or hub id) is an SDXL pipeline: its model_index.json lists ``text_encoder_2``.

    Raises OSError when there is no model_index.json to read (offline, say): ``loading_errors`` says what to do.
    """
    from huggingface_hub import hf_hub_download

    local = _local_folder(model)
    index = local / "model_index.json" if local is not None else Path(hf_hub_download(str(model), "model_index.json"))
    if not index.is_file():
        raise OSError(f"no model_index.json in {local}")
    return (json.loads(index.read_text()).get("text_encoder_2") or [None])[0] is not None


_NO_CHECKER = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


@contextmanager
def loading_errors(model: str | Path):
    """Turn the loaders' errors into a ModelError that says what to do instead."""
    local = Path(model).expanduser()
    try:
        yield
    except (OSError, ValueError) as err:
        if local.is_dir():
            raise ModelError(
                f"model folder {local} is not a complete diffusers Stable Diffusion folder ({first_line(err)})"
            ) from None
        raise ModelError(
            f"model {model!r} is not in the local Hugging Face cache and could not be fetched from the model hub. "
            f"Use a local diffusers folder instead: fill one on a machine with internet access with "
            f"`python -m pnp download-weights --model {model} --out weights` and pass that folder (weights), "
            "or use the random-weight test model 'tiny'"
        ) from None


def check_supported(pipe, model: str | Path) -> None:
    """Refuse models the method's code cannot run: an unknown prediction type, or a UNet without the injected layers."""
    prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ModelError(
            f"model {model}: predicts {prediction_type!r}; only {', '.join(PREDICTION_TYPES)} models are supported"
        )
    from .injection import missing_modules

    missing = missing_modules(pipe.injection_layers, pipe.unet)
    if missing:
        raise ModelError(
            f"model {model}: its UNet has no module {missing[0]}, where PnP injects features; "
            "it is not a Stable Diffusion 1.x, 2.x or SDXL UNet"
        )


@contextmanager
def open_model(name: str):
    """A path or hub id to load ``name`` from; the random-weight test models are built into a temporary folder,
    bundled models come from the package."""
    from .random_models import random_model_folder

    if name in RANDOM_MODELS:
        with random_model_folder(name) as folder:
            yield folder
    else:
        yield model_location(name)


def first_line(err: BaseException) -> str:
    """The first line of an error's message, or its type's name if it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
