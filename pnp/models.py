"""Loading Stable Diffusion weights, and choosing the device and dtype to run them on."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

log = logging.getLogger(__name__)

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelError(RuntimeError):
    """The model cannot be loaded; the message says how to provide it."""


def quiet_library_output() -> None:
    """Silence diffusers' and transformers' load-time progress bars and advice, keeping errors."""
    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()


def default_device() -> str:
    """The first CUDA GPU if there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """float16 on a GPU; bfloat16 on a CPU with bfloat16 instructions, where it is several times faster."""
    if torch.device(device).type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_bfloat16() else torch.float32


def cpu_has_bfloat16() -> bool:
    """Whether the processor has native bfloat16 arithmetic (x86 AMX/AVX512-BF16, Arm BF16)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set(cpuinfo.replace("\n", " ").split())
    return bool(flags & {"amx_bf16", "avx512_bf16", "bf16"})


def parse_dtype(name: str) -> torch.dtype:
    """Turn "float16" / "bfloat16" / "float32" into a torch dtype, with a clear error otherwise."""
    if name not in DTYPES:
        raise ModelError(f"dtype: {name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def load_pipeline(model: str | Path, device: str | None = None, dtype: torch.dtype | str | None = None) -> StableDiffusionPipeline:
    """Load a Stable Diffusion 1.x/2.x pipeline from a local diffusers folder or a model-hub id.

    A hub id is downloaded once into the usual Hugging Face cache. Only epsilon-prediction models
    are accepted: the inversion and the guidance formula assume it.
    """
    device = device or default_device()
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device: {device} was asked for but no CUDA GPU is available; use --device cpu")
    dtype = parse_dtype(dtype) if isinstance(dtype, str) else dtype or default_dtype(device)
    pipe = _from_pretrained(str(model), dtype)
    prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
    if prediction_type != "epsilon":
        raise ModelError(
            f"model {model}: predicts {prediction_type!r}; only epsilon-prediction models "
            "(Stable Diffusion 1.x, 2.x base) are supported"
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _from_pretrained(model: str, dtype: torch.dtype) -> StableDiffusionPipeline:
    local = Path(model).expanduser()
    kwargs = dict(dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if local.is_dir():
        try:
            return StableDiffusionPipeline.from_pretrained(local, local_files_only=True, **kwargs)
        except (OSError, ValueError) as err:
            raise ModelError(f"model folder {local} is not a complete diffusers Stable Diffusion folder: {err}") from None
    if model.startswith((".", "/", "~")) or local.exists():
        raise ModelError(f"model folder {local} does not exist; pass a diffusers model folder or a model-hub id")
    try:
        return StableDiffusionPipeline.from_pretrained(model, **kwargs)
    except OSError as err:
        raise ModelError(
            f"model {model!r} could not be loaded from the model hub ({_first_line(err)}). "
            "Without internet access, download it elsewhere with "
            f"`python -m pnp download-weights --model {model} --out weights` and pass that folder as the model"
        ) from None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
