"""The UNet work of a translation: which rows each call runs, from the configuration alone.

This is the method's minimal plan, the one rule the translation loop executes and the benchmark
counts. A translation advances every target, one (source image, prompt) pair, through N
sampling steps. Per step i and chunk of at most ``max_batch_size`` targets, one UNet call runs:
- in generation mode (fused generation), in the first chunk of every step: the generation's
  unconditional row and its conditional row, which is the source row;
- otherwise each source image's row, in the first chunk only and only inside an injection window
  (i < int(N f) or i < int(N a)), and only where the source's features at that step are not
  already known (a cached source); later chunks receive the features it produced;
- an unconditional row per target where the negative-prompt weight alpha_i > 0 (always, without
  a negative prompt);
- a negative-prompt row per target where alpha_i < 1, with a negative prompt only (where
  alpha_i = 0 it replaces the unconditional row);
- a conditional row per target.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from pnp.config import PnPConfig
from pnp.method.guidance import negative_prompt_alphas
from pnp.method.timesteps import inversion_timesteps, sampling_timesteps


class RowKind(Enum):
    """What a row of a UNet call computes."""

    GENERATION_UNCOND = "generation-uncond"  # a fused generation's unconditional row
    SOURCE = "source"  # a source's row, whose features are injected (a fused generation's conditional row)
    TARGET_UNCOND = "uncond"  # a target's unconditional guidance row
    TARGET_NEGATIVE = "negative"  # a target's negative-prompt guidance row
    TARGET_COND = "cond"  # a target's conditional row: its own prompt

    @property
    def is_target(self) -> bool:
        return self in TARGET_TERMS


# A target's guidance terms, in the order their rows appear in a call: one block of rows per term.
TARGET_TERMS = (RowKind.TARGET_UNCOND, RowKind.TARGET_NEGATIVE, RowKind.TARGET_COND)
# known(j, t, residual, attention): whether source j's features injected at timestep t (with these
# injections active) are already known, from the source cache.
Known = Callable[[int, int, bool, bool], bool]


@dataclass(frozen=True)
class Row:
    """One row of a UNet call: its kind, the target's prompt (None for generation and source rows), its source image."""

    kind: RowKind
    prompt: int | None = None
    image: int = 0


@dataclass(frozen=True)
class UNetCall:
    """One UNet call of a translation step: [generation row] [source rows] + one block of target rows per term."""

    targets: tuple[tuple[int, int], ...]  # (image, prompt) pairs this call advances
    sources: tuple[int, ...]  # images whose source row runs in this call
    terms: tuple[RowKind, ...]  # guidance terms computed for every target, in batch order
    generation: bool = False  # the generation's rows run in this call (fused generation)

    @property
    def rows(self) -> int:
        return len(self.layout)

    @property
    def layout(self) -> tuple[Row, ...]:
        """Every row of the call in batch order."""
        generation = (Row(RowKind.GENERATION_UNCOND),) if self.generation else ()
        sources = tuple(Row(RowKind.SOURCE, image=j) for j in self.sources)
        targets = tuple(Row(term, p, j) for term in self.terms for j, p in self.targets)
        return generation + sources + targets


@dataclass(frozen=True)
class TranslationStep:
    """One sampling step: what is injected, the negative-prompt weight, and its UNet calls."""

    index: int
    timestep: int
    residual: bool  # residual (conv2) features injected
    attention: bool  # self-attention queries and keys injected
    alpha: float  # weight of the unconditional term against the negative one
    calls: tuple[UNetCall, ...]


def translation_plan(
    config: PnPConfig,
    images: int = 1,
    known: Known | None = None,
    generation: bool = False,
    num_train_timesteps: int = 1000,
    offset: int = 1,
) -> list[TranslationStep]:
    """The UNet calls of every sampling step of a translation; see the module docstring.

    ``known`` says which sources' features are already known (their rows are left out);
    ``generation`` fuses a source generation into the same calls.
    """
    targets = [(j, p) for j in range(images) for p in range(len(config.prompt))]
    size = config.max_batch_size or len(targets)
    chunks = [tuple(targets[start : start + size]) for start in range(0, len(targets), size)]
    steps = config.num_inference_steps
    alphas = negative_prompt_alphas(config.negative_prompt_schedule, config.negative_prompt_alpha, steps)
    plan = []
    for i, t in enumerate(sampling_timesteps(steps, num_train_timesteps, offset)):
        residual, attention = i < config.feature_injection_steps, i < config.attention_injection_steps
        terms = guidance_terms(config.negative_prompt is not None, alphas[i])
        if generation:
            sources = (0,)
        else:
            injected = residual or attention
            sources = tuple(j for j in range(images) if injected and not (known and known(j, t, residual, attention)))
        calls = tuple(
            UNetCall(chunk, sources if n == 0 else (), terms, generation and n == 0) for n, chunk in enumerate(chunks)
        )
        plan.append(TranslationStep(i, t, residual, attention, alphas[i], calls))
    return plan


def guidance_terms(negative: bool, alpha: float) -> tuple[RowKind, ...]:
    """The guidance terms whose rows must be computed at a step with weight ``alpha``."""
    needed = {
        RowKind.TARGET_UNCOND: not negative or alpha > 0,
        RowKind.TARGET_NEGATIVE: negative and alpha < 1,
        RowKind.TARGET_COND: True,
    }
    return tuple(term for term in TARGET_TERMS if needed[term])


def inversion_rows(config: PnPConfig, images: int = 1, num_train_timesteps: int = 1000, offset: int = 1) -> list[int]:
    """One row per image and inversion timestep, up to and including the noisiest sampling timestep."""
    noisiest = sampling_timesteps(config.num_inference_steps, num_train_timesteps, offset)[0]
    return [images] * len(inversion_timesteps(config.num_inversion_steps, noisiest, num_train_timesteps, offset))


def translation_rows(
    config: PnPConfig, images: int = 1, generation: bool = False, num_train_timesteps: int = 1000, offset: int = 1
) -> list[int]:
    """The rows of every translation UNet call, in order."""
    plan = translation_plan(config, images, None, generation, num_train_timesteps, offset)
    return [call.rows for step in plan for call in step.calls]
