"""LoRA adapters: ``PATH[:SCALE]`` specs, checking their files, loading them into a pipeline under names.

A pipeline loads adapters with diffusers' own ``load_lora_weights`` (into the UNet and the text
encoders; peft does the work) and ``set_adapters`` weighs them; ``unload_lora_weights`` puts back
the very modules that were there before, so the UNet computes exactly what it did. Only
safetensors files are read unless pickles are allowed, as for checkpoints (``pnp.pipelines.weight_files``).
Torch-free at import: the command line checks specs before anything loads.
"""

from __future__ import annotations

import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from pnp.config import ConfigError, check_float
from pnp.pipelines.weight_files import SAFETENSORS_SUFFIX, is_pickled_name, safetensors_problem

# An adapter's weight in the sum (1: as trained; 0: off). Replicate's own SDXL model offers 0 to 1.
LORA_SCALE_RANGE = (0.0, 1.0)
DEFAULT_LORA_SCALE = 1.0
# How torch words one layer of a state dict that does not fit the model (load_state_dict's message).
_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from "
    r"checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)"
)
_MAX_REASON_CHARS = 400


def parse_lora(spec: str, allow_pickle: bool = False) -> tuple[Path, float]:
    """``PATH`` or ``PATH:SCALE`` as (an existing LoRA file or folder, its scale); ConfigError("lora", ...)
    otherwise."""
    path, sep, scale = spec.rpartition(":")
    if not sep or not _is_number(scale):
        path, scale = spec, DEFAULT_LORA_SCALE
    return check_lora_file(path, "lora", allow_pickle), check_float("lora", float(scale), *LORA_SCALE_RANGE)


def check_lora_file(path: str | Path, param: str, allow_pickle: bool = False, name: str | None = None) -> Path:
    """``path`` if it is a LoRA file (safetensors, or a pickle where allowed) or a folder holding one; ConfigError
    naming ``param``.

    A file named as a pickle (``PICKLED_SUFFIXES``) is one unless its content is safetensors; any
    other file must hold safetensors (``safetensors_problem``).
    """
    path = Path(path).expanduser()
    name = name or str(path)
    if not path.exists():
        raise ConfigError(param, f"no file at {name}")
    if not path.is_file():
        return path
    problem = safetensors_problem(path)
    if problem is not None and is_pickled_name(path):
        if allow_pickle:
            return path
        raise ConfigError(
            param,
            f"{name} is a pickled file, which is not loaded by default: convert it to .safetensors, "
            "or pass --allow-pickle if you trust its source",
        )
    if problem is not None:
        raise ConfigError(param, f"{name} {problem}; LoRA adapters are read from .safetensors files")
    return path


def load_loras(
    pipe, loras: list[tuple[Path, float]], param: str = "lora", labels: list[str] | None = None
) -> list[str]:
    """Load each (file, scale) of ``loras`` into ``pipe`` as adapters ``<param>0``, ``<param>1``, ... weighed by their
    scales.

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
            with _diffusers_location(path) as (folder, options):
                try:
                    pipe.load_lora_weights(folder, adapter_name=f"{param}{n}", local_files_only=True, **options)
                except (OSError, ValueError, KeyError, RuntimeError) as err:
                    # The message may name the file where it lies: the server's temporary folder, say.
                    read = Path(folder, options.get("weight_name", ""))
                    reason = _load_failure(err, f"{param}{n}", [path, read], labels[n])
                    raise ConfigError(
                        param, f"{labels[n]} cannot be loaded into this model as a LoRA adapter ({reason})"
                    ) from None
            if not any(f"{param}{n}" in adapters for adapters in pipe.get_list_adapters().values()):
                # diffusers loads a file without a layer of this model's as an adapter of nothing.
                raise ConfigError(
                    param,
                    f"{labels[n]} holds no LoRA layer of this model's UNet or text encoders: "
                    "it is empty, or was made for another kind of model",
                )
            names.append(f"{param}{n}")
        pipe.set_adapters(names, [scale for _, scale in loras])
    except BaseException:
        pipe.unload_lora_weights()
        raise
    return names


@contextmanager
def _diffusers_location(path: Path):
    """(folder, options) that make diffusers' ``load_lora_weights`` read ``path``, for the time of the load.

    diffusers tells safetensors from pickles by the file name: a safetensors file under another
    name (an upload Cog called ``file.bin``) is given to it through a link named as safetensors.
    """
    if not path.is_file():
        yield str(path), {}
    elif path.name.lower().endswith(SAFETENSORS_SUFFIX) or safetensors_problem(path) is not None:
        yield str(path.parent), {"weight_name": path.name}
    else:
        with tempfile.TemporaryDirectory(prefix="pnp-lora-") as folder:
            (Path(folder) / f"adapter{SAFETENSORS_SUFFIX}").symlink_to(path.resolve())
            yield folder, {"weight_name": f"adapter{SAFETENSORS_SUFFIX}"}


def _load_failure(err: BaseException, adapter: str, files: list, label: str) -> str:
    """The reason a load failed, whole but on one line, calling the file ``label`` wherever it named one of ``files``.

    A state dict that does not fit the model (an adapter for another architecture) is summed up
    by the count of layers that do not fit and the first of them.
    """
    text = str(err)
    mismatches = _SIZE_MISMATCH.findall(text)
    if mismatches:
        layer, theirs, ours = mismatches[0]
        layer = layer.replace(f".{adapter}.", ".")
        return (
            f"{len(mismatches)} of its layers have other shapes than this model's, e.g. {layer}: {theirs} in the "
            f"adapter, {ours} in the model; it was made for another architecture"
        )
    files = [Path(file) for file in files]
    for form in [str(f.resolve()) for f in files] + [str(f) for f in files] + [f.name for f in files if f.is_file()]:
        text = text.replace(form, label)
    text = " ".join(text.split()) or type(err).__name__
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 3] + "..."


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
