"""Reading a benchmark from disk, in whichever format it is: a TI2I yaml file, or a PIE-Bench folder."""

from __future__ import annotations

from pathlib import Path

from pnp.config import ConfigError
from pnp.evaluation import piebench, ti2i
from pnp.evaluation.benchmarks import Benchmark


def load_benchmark(path: str | Path) -> Benchmark:
    """A TI2I yaml file, or a PIE-Bench folder (or its mapping_file.json)."""
    path = Path(path)
    if path.is_dir() or path.name == piebench.MAPPING_FILE:
        return piebench.load(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        return ti2i.load(path)
    if not path.exists():
        raise ConfigError("benchmark", f"no file or folder at {path}")
    raise ConfigError(
        "benchmark", f"{path} is neither a TI2I .yaml file nor a PIE-Bench folder (with {piebench.MAPPING_FILE})"
    )
