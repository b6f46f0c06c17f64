"""The paper's TI2I benchmark files (Wild-TI2I, ImageNetR-TI2I, ImageNetR-Fake-TI2I): yaml lists of sources.

Two forms of entry, told apart by their keys:
- a real image: ``init_img`` (a path relative to the yaml file), ``target_prompts``, optionally
  ``source_prompt`` (kept in the results; the inversion itself uses the empty prompt);
- a generated source: ``source_prompt``, ``seed``, ``scale``, ``ddim_steps``, ``target_prompts``.
  The pipeline samples the generation and the translation on one schedule, so ``ddim_steps``
  sets the sampling steps of that source's translation too.
The file holds a list of entries, or a mapping from names to entries.
"""

from __future__ import annotations

import numbers
from pathlib import Path

from pnp.config import RANGES, ConfigError, check_float, check_int, check_seed
from pnp.evaluation.benchmarks import TI2I, Benchmark, Generation, Source, check_image, check_prompts
from pnp.messages import first_line
from pnp.outputs import slug

REAL_KEYS = ("init_img", "target_prompts")
GENERATED_KEYS = ("source_prompt", "seed", "scale", "ddim_steps", "target_prompts")


def load(path: Path) -> Benchmark:
    """Read a TI2I yaml file; ConfigError("benchmark", ...) names the entry and the problem."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError("benchmark", f"no file at {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError("benchmark", f"{path} is not valid yaml ({first_line(err)})") from None
    if isinstance(data, dict):
        entries = list(data.items())
    elif isinstance(data, list):
        entries = [(None, entry) for entry in data]
    else:
        raise ConfigError("benchmark", f"{path}: expected a list of entries, got {type(data).__name__}")
    if not entries:
        raise ConfigError("benchmark", f"{path} has no entries")
    sources = [_source(i, name, entry, path.parent) for i, (name, entry) in enumerate(entries)]
    return Benchmark(path, TI2I, tuple(sources))


def _source(index: int, name: object, entry: object, folder: Path) -> Source:
    where = f"entry {index + 1}" + (f" ({name})" if name is not None else "")
    if not isinstance(entry, dict):
        raise ConfigError("benchmark", f"{where}: expected a mapping with {', '.join(REAL_KEYS)}, got {entry!r}")
    prompts = check_prompts(where, entry.get("target_prompts"))
    if "init_img" in entry:
        image = check_image(where, folder, entry["init_img"])
        label = name if name is not None else image.stem
        info = {"source_prompt": entry.get("source_prompt")}
        return Source(_key(index, label), prompts, image=image, info=info)
    missing = [key for key in GENERATED_KEYS if key not in entry]
    if missing:
        raise ConfigError(
            "benchmark",
            f"{where}: has neither init_img (a real image) nor {', '.join(missing)} (a generated source)",
        )
    generation = Generation(
        prompt=_text(where, "source_prompt", entry["source_prompt"]),
        seed=_checked(where, check_seed, entry["seed"]),
        scale=_checked(
            where, lambda v: check_float("scale", v, *RANGES["generation_guidance_scale"]), _number(entry["scale"])
        ),
        steps=_checked(
            where, lambda v: check_int("ddim_steps", v, *RANGES["num_inference_steps"]), entry["ddim_steps"]
        ),
    )
    label = name if name is not None else generation.prompt
    return Source(_key(index, label), prompts, generation=generation, info={"source_prompt": generation.prompt})


def _key(index: int, label: object) -> str:
    # The position keeps keys unique and in file order; the label makes them readable.
    return f"{index:04d}-{slug(str(label), 40)}"


def _text(where: str, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("benchmark", f"{where}: {key} must be a non-empty string, got {value!r}")
    return value.strip()


def _number(value: object) -> object:
    # yaml reads "scale: 10" as an int; the scale is a real number either way.
    return float(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


def _checked(where: str, check, value):
    try:
        return check(value)
    except ConfigError as err:
        raise ConfigError("benchmark", f"{where}: {err.param}: {err.reason}") from None
