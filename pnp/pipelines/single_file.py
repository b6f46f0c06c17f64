"""Single-file checkpoints: one file holding every component in the original (LDM) layout, as community fine-tunes ship.

They load through diffusers' ``from_single_file``, which converts each component and takes
everything the file lacks (component configs, tokenizers, scheduler, including the prediction
type) from a base configuration: a local diffusers folder or a model-hub id of the same
architecture. Without one, diffusers guesses the architecture from the file and fetches the
configuration from the model hub, which needs internet access: offline, the error says what to pass.

Only safetensors files are read unless pickled checkpoints (.ckpt, .pt, .pth, .bin) are allowed
explicitly (``pnp.pipelines.weight_files``).
"""

from __future__ import annotations

from pathlib import Path

from pnp.messages import first_line
from pnp.pipelines.hub import hub_unreachable
from pnp.pipelines.loading import NO_SAFETY_CHECKER, ModelError, is_sdxl
from pnp.pipelines.weight_files import SAFETENSORS_SUFFIX, is_pickled_name

# A key only SDXL checkpoints have: the second text encoder (OpenCLIP bigG), in the original layout.
SDXL_KEY_PREFIX = "conditioner.embedders.1."


def is_single_file(model: str | Path) -> bool:
    """Whether ``model`` names a checkpoint file rather than a diffusers folder or a hub id."""
    named = str(model).lower().endswith(SAFETENSORS_SUFFIX) or is_pickled_name(model)
    return named or Path(model).expanduser().is_file()


def check_single_file(model: str | Path, allow_pickle: bool = False) -> Path:
    """The checkpoint file ``model`` names, if it exists and its format may be read; ModelError saying what to do
    otherwise."""
    path = Path(model).expanduser()
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    suffix = path.suffix.lower()
    if is_pickled_name(path) and not allow_pickle:
        raise ModelError(
            f"model file {path} is a pickled checkpoint, which is not loaded by default: convert it to "
            f"{SAFETENSORS_SUFFIX}, or pass --allow-pickle (allow_pickle=True) if you trust its source"
        )
    if suffix != SAFETENSORS_SUFFIX and not is_pickled_name(path):
        raise ModelError(
            f"model file {path}: a checkpoint file must end in {SAFETENSORS_SUFFIX} (or, allowed explicitly, .ckpt)"
        )
    return path


def is_sdxl_checkpoint(path: Path, config: str | Path | None) -> bool:
    """Whether the checkpoint is SDXL's: by its base configuration if given, else by its keys. ModelError if
    unreadable."""
    config = _base_config(config)
    try:
        return is_sdxl(config) if config is not None else _has_sdxl_keys(path)
    except (OSError, ValueError) as err:
        raise ModelError(
            f"--config {config}: not a diffusers model folder or a model-hub id in the local cache "
            f"({first_line(err)}); pass a folder written by `python -m pnp download-weights`"
        ) from None


def load_single_file(cls, path: Path, config: str | Path | None, dtype, has_safety_checker: bool, **kwargs):
    """``cls.from_single_file`` (the mixin's own loader) for the checked ``path`` with the base configuration
    ``config``.

    ``cls`` is the pipeline class of the checkpoint's architecture; errors become ModelError.
    """
    from diffusers.loaders import FromSingleFileMixin

    config = _base_config(config)
    options = NO_SAFETY_CHECKER if has_safety_checker else {}
    # A local configuration, or none reachable: the hub is not asked (its retries take half a minute offline).
    local = (config is not None and Path(config).is_dir()) or hub_unreachable()
    try:
        # The mixin's own loader, for the class given (PnPPipeline.from_single_file calls this function).
        return FromSingleFileMixin.from_single_file.__func__(
            cls, str(path), config=config, dtype=dtype, local_files_only=local, **options, **kwargs
        )
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        if config is None:
            raise ModelError(
                f"model file {path}: its base configuration could not be fetched ({first_line(err)}). Offline, pass "
                "--config (config=) with a diffusers folder of the same architecture, for example one written by "
                "`python -m pnp download-weights --model stabilityai/stable-diffusion-xl-base-1.0 --out base` for an "
                "SDXL checkpoint (stable-diffusion-v1-5/stable-diffusion-v1-5 for SD 1.x, "
                "stabilityai/stable-diffusion-2-1 for SD 2.x)"
            ) from None
        raise ModelError(
            f"model file {path} does not load with the configuration {config} ({first_line(err)})"
        ) from None


def _base_config(config: str | Path | None) -> str | None:
    """A base configuration as diffusers takes it: a local folder's full path, or a hub id."""
    if config is None:
        return None
    return str(Path(config).expanduser()) if Path(config).expanduser().is_dir() else str(config)


def _has_sdxl_keys(path: Path) -> bool:
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as checkpoint:
            keys = list(checkpoint.keys())
    else:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        while "state_dict" in state:
            state = state["state_dict"]
        keys = list(state)
    return any(key.startswith(SDXL_KEY_PREFIX) for key in keys)
