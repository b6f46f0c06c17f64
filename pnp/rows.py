"""The UNet work of a translation: which rows each call runs, from the configuration alone.

This is the method's minimal plan, the one rule the translation loop executes and the benchmark
counts. Per sampling step i and chunk of at most ``max_batch_size`` prompts, one UNet call runs:
- the source row, in the first chunk only and only inside an injection window
  (i < int(N f) or i < int(N a)); later chunks receive the features it produced;
- an unconditional row per prompt where the negative-prompt weight alpha_i > 0 (always, without
  a negative prompt);
- a negative-prompt row per prompt where alpha_i < 1, with a negative prompt only (where
  alpha_i = 0 it replaces the unconditional row);
- a conditional row per prompt.
Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import PnPConfig
from .guidance import negative_prompt_alphas
from .timesteps import inversion_timesteps, sampling_timesteps

# Guidance terms in the order their rows appear in a call, k rows each.
TERMS = ("uncond", "negative", "cond")


@dataclass(frozen=True)
class Row:
    """What one row of a UNet call computes: the source row, or a guidance term of a target prompt."""

    kind: str  # "source" or one of TERMS
    prompt: int | None = None  # the target prompt's index; None for the source row


@dataclass(frozen=True)
class UNetCall:
    """One UNet call of a translation step: [source row?] + one block of rows per guidance term."""

    prompts: range  # indices of the target prompts this call advances
    source: bool  # whether the batch starts with the source row
    terms: tuple[str, ...]  # guidance terms computed, in batch order

    @property
    def rows(self) -> int:
        return int(self.source) + len(self.terms) * len(self.prompts)

    @property
    def layout(self) -> tuple[Row, ...]:
        """Every row of the call in batch order: the source row first (if any), then each term's block of prompts."""
        source = (Row("source"),) if self.source else ()
        return source + tuple(Row(term, p) for term in self.terms for p in self.prompts)


@dataclass(frozen=True)
class TranslationStep:
    """One sampling step: what is injected, the negative-prompt weight, and its UNet calls."""

    index: int
    timestep: int
    residual: bool  # residual (conv2) features injected
    attention: bool  # self-attention queries and keys injected
    alpha: float  # weight of the unconditional term against the negative one
    calls: tuple[UNetCall, ...]


def translation_plan(config: PnPConfig, num_train_timesteps: int = 1000, offset: int = 1) -> list[TranslationStep]:
    """The UNet calls of every sampling step of a translation; see the module docstring."""
    count = len(config.prompt)
    size = config.max_batch_size or count
    chunks = [range(start, min(start + size, count)) for start in range(0, count, size)]
    steps = config.num_inference_steps
    alphas = negative_prompt_alphas(config.negative_prompt_schedule, config.negative_prompt_alpha, steps)
    plan = []
    for i, t in enumerate(sampling_timesteps(steps, num_train_timesteps, offset)):
        residual, attention = i < config.feature_injection_steps, i < config.attention_injection_steps
        terms = guidance_terms(config.negative_prompt is not None, alphas[i])
        calls = tuple(UNetCall(rows, (residual or attention) and n == 0, terms) for n, rows in enumerate(chunks))
        plan.append(TranslationStep(i, t, residual, attention, alphas[i], calls))
    return plan


def guidance_terms(negative: bool, alpha: float) -> tuple[str, ...]:
    """The guidance terms whose rows must be computed at a step with weight ``alpha``."""
    needed = {"uncond": not negative or alpha > 0, "negative": negative and alpha < 1, "cond": True}
    return tuple(term for term in TERMS if needed[term])


def inversion_rows(config: PnPConfig, num_train_timesteps: int = 1000, offset: int = 1) -> list[int]:
    """One row per inversion timestep, up to and including the noisiest sampling timestep."""
    noisiest = sampling_timesteps(config.num_inference_steps, num_train_timesteps, offset)[0]
    return [1] * len(inversion_timesteps(config.num_inversion_steps, noisiest, num_train_timesteps, offset))


def generation_rows(config: PnPConfig) -> list[int]:
    """Two rows (unconditional and conditional) per generation step."""
    return [2] * config.num_inference_steps


def translation_rows(config: PnPConfig, num_train_timesteps: int = 1000, offset: int = 1) -> list[int]:
    """The rows of every translation UNet call, in order."""
    return [call.rows for step in translation_plan(config, num_train_timesteps, offset) for call in step.calls]
