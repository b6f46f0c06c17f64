"""LoRA adapters: ``PATH[:SCALE]`` specs, checking their files, loading them into a pipeline under names.

A pipeline loads adapters with diffusers' own ``load_lora_weights`` (into the UNet and the text
encoders; peft does the work) and ``set_adapters`` weighs them; ``unload_lora_weights`` puts back
the very modules that were there before, so the UNet computes exactly what it did. Only
safetensors files are read unless pickles are allowed, as for checkpoints (``pnp.pipelines.single_file``).
Torch-free at import: the command line checks specs before anything loads.
"""

from __future__ import annotations

from pathlib import Path

from pnp.config import ConfigError, check_float

# An adapter's weight in the sum (1: as trained; 0: off). Replicate's own SDXL model offers 0 to 1.
MIN_LORA_SCALE, MAX_LORA_SCALE = 0.0, 1.0
DEFAULT_LORA_SCALE = 1.0
PICKLED_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def parse_lora(spec: str, allow_pickle: bool = False) -> tuple[Path, float]:
    """``PATH`` or ``PATH:SCALE`` as (an existing LoRA file or folder, its scale); ConfigError("lora", ...) otherwise."""
    path, sep, scale = spec.rpartition(":")
    if not sep or not _is_number(scale):
        path, scale = spec, DEFAULT_LORA_SCALE
    return check_lora_file(path, "lora", allow_pickle), check_float("lora", float(scale), MIN_LORA_SCALE, MAX_LORA_SCALE)


def check_lora_file(path: str | Path, param: str, allow_pickle: bool = False, name: str | None = None) -> Path:
    """``path`` if it is a LoRA file (safetensors, or a pickle where allowed) or a folder holding one; ConfigError naming ``param``."""
    path = Path(path).expanduser()
    name = name or str(path)
    if not path.exists():
        raise ConfigError(param, f"no file at {name}")
    if path.is_file() and path.suffix.lower() in PICKLED_SUFFIXES and not allow_pickle:
        raise ConfigError(param, f"{name} is a pickled file, which is not loaded by default: convert it to .safetensors, "
                                 "or pass --allow-pickle if you trust its source")
    return path


def load_loras(pipe, loras: list[tuple[Path, float]], param: str = "lora", labels: list[str] | None = None) -> list[str]:
    """Load each (file, scale) of ``loras`` into ``pipe`` as adapters ``<param>0``, ``<param>1``, ... weighed by their scales.

    Returns the adapter names. A file the model cannot take raises ConfigError naming ``param``
    and the file (by its ``labels`` entry, default its name), after unloading every adapter: a
    failed load can leave adapter layers behind.
    """
    names: list[str] = []
    if not loras:
        return names
    labels = labels or [path.name for path, _ in loras]
    n = 0
    try:
        for n, (path, _) in enumerate(loras):
            options = {"weight_name": path.name} if path.is_file() else {}
            folder = path.parent if path.is_file() else path
            pipe.load_lora_weights(str(folder), adapter_name=f"{param}{n}", local_files_only=True, **options)
            names.append(f"{param}{n}")
        pipe.set_adapters(names, [scale for _, scale in loras])
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        pipe.unload_lora_weights()
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(param, f"{labels[n]} cannot be loaded into this model as a LoRA adapter ({text})") from None
    return names


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
