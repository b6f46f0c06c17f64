"""A benchmark as a list of sources, each translated into all its prompts in one call, and the checks its readers share.

Torch-free. Paths inside a benchmark resolve relative to its file (its folder, for PIE-Bench).
Every problem is reported as ``ConfigError("benchmark", ...)`` naming the entry and what to fix,
before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pnp.config import MAX_PROMPTS, ConfigError

TI2I = "ti2i"
PIE_BENCH = "pie-bench"


@dataclass(frozen=True)
class Source:
    """One source image (a file, or generated from a prompt) and the prompts to translate it into.

    key: unique within the benchmark and file-name safe; results and outputs are filed under it.
    image: the source image file (in a batch manifest also an http(s) URL); None for a generated source.
    generation: for a generated source, its prompt, seed, guidance scale and sampling steps.
    mask: PIE-Bench's edited region, run-length encoded over the flattened image.
    mask_file: a mask image file (in a batch manifest also an http(s) URL), white where the edit may happen:
        the source is always translated with it (a batch manifest's ``mask`` column).
    info: what the benchmark says about the source, written into the results as it is
        (source prompt, editing type and instruction, ...).
    """

    key: str
    prompts: tuple[str, ...]
    image: Path | str | None = None
    generation: Generation | None = None
    mask: tuple[int, ...] | None = None
    mask_file: Path | str | None = None
    editing_type: str | None = None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Generation:
    """How a generated source is made: TI2I's ``source_prompt``, ``seed``, ``scale`` and ``ddim_steps``."""

    prompt: str
    seed: int
    scale: float
    steps: int


@dataclass(frozen=True)
class Benchmark:
    """A benchmark file's sources, in file order."""

    path: Path
    kind: str  # TI2I or PIE_BENCH
    sources: tuple[Source, ...]

    @property
    def name(self) -> str:
        return self.path.stem if self.path.is_file() else self.path.name

    def limited(self, limit: int | None) -> Benchmark:
        """The first ``limit`` sources (all of them for None)."""
        return self if limit is None else Benchmark(self.path, self.kind, self.sources[:limit])


def check_prompts(where: str, prompts: object) -> tuple[str, ...]:
    """Target prompts as a tuple of non-empty strings, at most as many as one call translates."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ConfigError("benchmark", f"{where}: target prompts must be a list of non-empty strings, got {prompts!r}")
    if len(prompts) > MAX_PROMPTS:
        raise ConfigError(
            "benchmark", f"{where}: {len(prompts)} target prompts, at most {MAX_PROMPTS} are translated in one call"
        )
    return tuple(p.strip() for p in prompts)


def check_image(where: str, folder: Path, relative: object) -> Path:
    """An image path from the benchmark, relative to ``folder``, that exists."""
    if not isinstance(relative, str) or not relative:
        raise ConfigError("benchmark", f"{where}: expected an image path, got {relative!r}")
    path = folder / relative
    if not path.is_file():
        raise ConfigError("benchmark", f"{where}: no image at {path}")
    return path
