"""The loading rules: which models are known by name, where weights come from (local folders or the model
hub), on which device and in which dtype, which models the method can run, and errors that say what to do.

``PnPPipeline.from_pretrained`` follows these rules; the command line and the web UI open a model
by its name with ``pnp.pipelines.named_models.open_model``. Torch-free at import.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from pnp.config import ConfigError
from pnp.devices import default_device, default_dtype, parse_dtype
from pnp.messages import first_line
from pnp.method.layers import missing_modules
from pnp.method.prediction import PREDICTION_TYPES
from pnp.pipelines.hub import hub_unreachable

# The model-hub id loaded when none is named.
DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
# Models known by name. The random-weight test models, whose outputs are noise, are built on
# demand (``pnp.pipelines.random_models``); bundled models are diffusers folders shipped inside the
# package (package data), which load like any other folder, after `pip install` too.
RANDOM_MODELS = ("tiny", "tiny-v", "tiny-sdxl", "random-sd15")
# The toy model: trained on the world of ``pnp.toy.world`` by scripts/train_toy_model.py.
TOY_MODEL = "toy"
BUNDLED_MODELS = {TOY_MODEL: Path(__file__).resolve().parents[1] / "toy" / "model"}

# The options that load a Stable Diffusion pipeline without its safety checker.
NO_SAFETY_CHECKER = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


class ModelError(RuntimeError):
    """The model cannot be loaded or used; the message says how to provide one that can."""


def choose_device_and_dtype(device: str | None, dtype) -> tuple[str, object]:
    """The device (default: CUDA if present) and torch dtype (default: ``pnp.devices.default_dtype``) to load onto.

    A value that cannot be used raises ConfigError("device" or "dtype", ...): each entry point names
    the setting its own way (the command line's --device, the predictor's PNP_DEVICE).
    """
    import torch

    device = device or default_device()
    try:
        torch.device(device)
    except RuntimeError:
        raise ConfigError("device", f"{device!r} is not a device torch knows; use cpu or cuda") from None
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"{device} was asked for but no CUDA GPU is available; use cpu")
    if isinstance(dtype, str):
        try:
            dtype = parse_dtype(dtype)
        except ValueError as err:
            raise ConfigError("dtype", str(err).removeprefix("dtype: ")) from None
    return device, dtype or default_dtype(device)


def model_location(model: str | Path) -> str | Path:
    """Where ``model`` loads from: a bundled model's folder for its name (``toy``), else ``model`` itself."""
    return BUNDLED_MODELS.get(model, model) if isinstance(model, str) else model


def loading_options(model: str | Path, safety_checker: bool = True) -> dict:
    """from_pretrained options for ``model``: local folders load offline, with a safety checker only where present.

    A hub id loads without a safety checker unless the caller asks for one: it would otherwise
    add a 1.2 GB download that the translation does not need. ``safety_checker``: whether the
    pipeline has one at all (SDXL's has not). Where the hub cannot be reached, a hub id loads
    from the local cache only (see ``pnp.hub``).
    """
    local = _local_folder(model)
    no_checker = NO_SAFETY_CHECKER if safety_checker else {}
    if local is not None:
        has_checker = (local / "safety_checker").is_dir() and (local / "feature_extractor").is_dir()
        options = {"local_files_only": True}
        return options if has_checker else {**options, **no_checker}
    return {**no_checker, "local_files_only": True} if hub_unreachable() else dict(no_checker)


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
    index = _config_file(model, "model_index.json", local_files_only=hub_unreachable())
    return (index.get("text_encoder_2") or [None])[0] is not None


def own_resolution(model: str | Path) -> int | None:
    """The image size in pixels that a diffusers folder or hub id (from the local cache only) is made for, read from
    its configuration files before anything loads: as the pipelines' ``default_resolution``, its UNet's sample size
    times its VAE's factor (diffusers' rule: 2 per VAE block after the first). None where the files cannot be read
    so: a random-weight test model, a single-file checkpoint, a hub id not in the cache."""
    try:
        unet, vae = (_config_file(model, f"{part}/config.json", local_files_only=True) for part in ("unet", "vae"))
        return int(unet["sample_size"]) * vae_scale_factor(vae)
    except (OSError, ValueError, KeyError, TypeError, ModelError):
        return None


def vae_scale_factor(vae_config) -> int:
    """How many image pixels a latent pixel spans on a side: diffusers' rule, 2 per VAE block after the first."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def _config_file(model: str | Path, name: str, local_files_only: bool) -> dict:
    """The JSON file ``name`` of a local folder or hub id (from the hub's cache, or fetched unless
    ``local_files_only``); OSError where there is none to read."""
    from huggingface_hub import hf_hub_download

    local = _local_folder(model)
    path = Path(hf_hub_download(str(model), name, local_files_only=local_files_only)) if local is None else local / name
    if not path.is_file():
        raise OSError(f"no {name} in {local}")
    return json.loads(path.read_text())


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
    missing = missing_modules(pipe.injection_layers, pipe.unet)
    if missing:
        raise ModelError(
            f"model {model}: its UNet has no module {missing[0]}, where PnP injects features; "
            "it is not a Stable Diffusion 1.x, 2.x or SDXL UNet"
        )
