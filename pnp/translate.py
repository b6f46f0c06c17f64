"""The translation loop: all target prompts sampled together, the source's features injected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .ddim import DDIMSchedule, ddim_step
from .guidance import guided_noise
from .injection import FeatureInjector, InjectionLayers
from .inversion import StepEnd, Trajectory
from .rows import TranslationStep, UNetCall
from .unet import NoisePredictor


class CallObserver(Protocol):
    """Something that wants to know which step and call (``UNetCall.layout``) the next UNet call computes."""

    def before_call(self, step: TranslationStep, call: UNetCall) -> None: ...


@dataclass
class Prompts:
    """Text embeddings of a translation, each (n, 77, D)."""

    targets: torch.Tensor  # one row per target prompt
    uncond: torch.Tensor  # the empty prompt
    negative: torch.Tensor | None  # None when there is no negative prompt


def translate(
    predict: NoisePredictor,
    ddim: DDIMSchedule,
    source: Trajectory,
    prompts: Prompts,
    plan: list[TranslationStep],
    scale: float,
    layers: InjectionLayers,
    step_end: StepEnd | None = None,
    observer: CallObserver | None = None,
) -> torch.Tensor:
    """Sample one latent per target prompt from the source's noisiest latent; returns (P, 4, h, w).

    Each step runs the UNet calls of its ``plan`` entry (``pnp.rows``): per chunk of prompts,
    [source row (inside an injection window, first chunk only), one block of rows per guidance
    term], in the order of ``UNetCall.layout``. ``observer`` (for example a feature capture) is
    told about every call just before it runs.
    """
    x = source.latents[plan[0].timestep].repeat(len(prompts.targets), 1, 1, 1)
    t_next = [step.timestep for step in plan[1:]] + [None]
    with FeatureInjector(predict.unet, layers) as injector:
        for step, following in zip(plan, t_next):
            t = step.timestep
            for call in step.calls:
                rows = slice(call.prompts.start, call.prompts.stop)
                injector.set_step(step.residual, step.attention, call.source)
                if observer is not None:
                    observer.before_call(step, call)
                eps = _guided_eps(predict, t, x[rows], call, source, prompts, step.alpha, scale)
                x[rows] = ddim_step(x[rows], eps, ddim.alpha_bar(t), ddim.alpha_bar(following))
            if step_end is not None and (x := step_end(step.index, t, x)) is None:
                break
    return x


def _guided_eps(predict, t, x, call: UNetCall, source: Trajectory, prompts: Prompts, alpha, scale) -> torch.Tensor:
    """One UNet call for a chunk of k prompts, with the rows its plan lists."""
    k = x.shape[0]
    embeddings = {
        "uncond": prompts.uncond.expand(k, -1, -1),
        "negative": prompts.negative.expand(k, -1, -1) if prompts.negative is not None else None,
        "cond": prompts.targets[call.prompts.start : call.prompts.stop],
    }
    latents = [x] * len(call.terms)
    texts = [embeddings[term] for term in call.terms]
    if call.source:
        latents.insert(0, source.latents[t])
        texts.insert(0, source.embedding)
    eps = predict(torch.cat(latents), t, torch.cat(texts))
    if call.source:
        eps = eps[1:]
    parts = dict(zip(call.terms, eps.split(k)))
    return guided_noise(parts.get("uncond"), parts.get("negative"), parts["cond"], alpha, scale)
