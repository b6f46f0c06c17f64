"""The translation loop: every target sampled together, each source's features injected into its targets."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch

from pnp.method.ddim import DDIMSchedule, ddim_step
from pnp.method.guidance import guided_noise
from pnp.method.injection import FeatureInjector, InjectedFeatures, InjectionLayers
from pnp.method.ddim import StepEnd
from pnp.method.trajectory import Trajectory
from pnp.method.plan import Row, RowKind, TranslationStep, UNetCall
from pnp.method.text import TextEmbeddings
from pnp.method.noise_predictor import NoisePredictor


class CallObserver(Protocol):
    """Something that wants to know which step and call (``UNetCall.layout``) the next UNet call computes."""

    def before_call(self, step: TranslationStep, call: UNetCall) -> None: ...


@dataclass
class Generation:
    """A source generated in the translation's own UNet calls (fused generation): its noise, guidance and prompt."""

    noise: torch.Tensor  # (1, 4, h, w): the latent entering the first sampling step
    embedding: TextEmbeddings  # the generation prompt
    scale: float  # its classifier-free guidance scale
    clean: torch.Tensor | None = None  # the final generated latent, once the loop has run


@dataclass
class Translated:
    """The targets' final latents, in (image, prompt) order, and the source features the loop computed."""

    latents: torch.Tensor
    injected: dict[int, dict[int, InjectedFeatures]] = field(default_factory=dict)  # image -> timestep -> features


def translate(
    predict: NoisePredictor,
    ddim: DDIMSchedule,
    sources: list[Trajectory],
    prompts: Prompts,
    plan: list[TranslationStep],
    scale: float,
    layers: InjectionLayers,
    step_end: StepEnd | None = None,
    observer: CallObserver | None = None,
    known: dict[int, dict[int, InjectedFeatures]] | None = None,
    generation: Generation | None = None,
    injector: FeatureInjector | None = None,
) -> Translated:
    """Sample one latent per target, each (source image, prompt) pair, from its source's noisiest latent.

    Each step runs the UNet calls of its ``plan`` entry (``pnp.method.plan``), with rows in the order of
    ``UNetCall.layout``. ``known[j][t]`` are source j's features at timestep t from an earlier run
    (the plan leaves out those source rows). With ``generation``, sources[0] is generated in the
    same calls: its latents are recorded into ``sources[0].latents`` as the loop makes them.
    ``observer`` (a feature capture, say) is told about every call just before it runs. A stop
    from ``step_end`` returns the latents as they are. ``injector`` is the hooks already installed
    on a compiled UNet; without, they are installed for this translation only.
    """
    count = len(prompts.targets)
    first = plan[0].timestep
    if generation is not None:
        sources[0].latents[first] = generation.noise
    x = torch.cat([source.latents[first].expand(count, -1, -1, -1) for source in sources])
    translated = Translated(x)
    t_next = [step.timestep for step in plan[1:]] + [None]
    with _injecting(predict.unet, layers, injector) as injector:
        for step, following in zip(plan, t_next):
            t = step.timestep
            injector.start_step(step.residual, step.attention, _known_at(known, t))
            for call in step.calls:
                injector.set_call(call.layout, x.device)
                if observer is not None:
                    observer.before_call(step, call)
                eps = predict(*_batch(call, t, x, sources, prompts, generation))
                injector.check_call()
                rows = [j * count + p for j, p in call.targets]
                parts = _by_row(call, eps)
                guided = guided_noise(parts.get(RowKind.TARGET_UNCOND), parts.get(RowKind.TARGET_NEGATIVE),
                                      parts[RowKind.TARGET_COND], step.alpha, scale)
                x[rows] = ddim_step(x[rows], guided, ddim.alpha_bar(t), ddim.alpha_bar(following))
                if call.generation:
                    _advance(generation, sources[0], parts, ddim, t, following)
            for j, features in injector.computed.items():
                translated.injected.setdefault(j, {})[t] = features
            if step_end is not None and (x := step_end(step.index, t, x)) is None:
                break
            translated.latents = x
    return translated


@contextmanager
def _injecting(unet, layers: InjectionLayers, installed: FeatureInjector | None):
    """The installed injector, idle again afterwards; or a new one, removed afterwards."""
    if installed is None:
        with FeatureInjector(unet, layers) as injector:
            yield injector
        return
    try:
        yield installed
    finally:
        installed.idle()


def _batch(call: UNetCall, t: int, x, sources: list[Trajectory], prompts: Prompts, generation: Generation | None):
    """The latents and text embeddings of every row of ``call``, in its layout's order."""
    count = len(prompts.targets)
    latents, texts = [], []
    for row in call.layout:
        if row.kind is RowKind.GENERATION_UNCOND:
            latents.append(sources[0].latents[t][0])
            texts.append(prompts.uncond)
        elif row.kind is RowKind.SOURCE:
            latents.append(sources[row.image].latents[t][0])
            texts.append(generation.embedding if generation is not None else sources[row.image].embedding)
        else:
            latents.append(x[row.image * count + row.prompt])
            texts.append(_target_text(row, prompts))
    return torch.stack(latents), t, TextEmbeddings.cat(texts)


def _target_text(row: Row, prompts: Prompts) -> TextEmbeddings:
    """The text of a target's row: its prompt, the unconditional text or the negative prompt."""
    if row.kind is RowKind.TARGET_COND:
        return prompts.targets[row.prompt]
    return prompts.uncond if row.kind is RowKind.TARGET_UNCOND else prompts.negative


def _by_row(call: UNetCall, eps: torch.Tensor) -> dict[RowKind, torch.Tensor]:
    """The UNet's output split by kind of row: the generation's two rows, and one (targets, ...) block per term."""
    layout = call.layout
    parts = {}
    if call.generation:
        for kind in (RowKind.GENERATION_UNCOND, RowKind.SOURCE):
            parts[kind] = eps[[i for i, row in enumerate(layout) if row.kind is kind and row.image == 0]]
    first = len(layout) - len(call.terms) * len(call.targets)
    for n, term in enumerate(call.terms):
        start = first + n * len(call.targets)
        parts[term] = eps[start : start + len(call.targets)]
    return parts


def _advance(generation: Generation, source: Trajectory, parts, ddim: DDIMSchedule, t: int, following: int | None) -> None:
    """One step of the fused generation: guidance between its two rows, then DDIM; the new latent is recorded."""
    eps = guided_noise(parts[RowKind.GENERATION_UNCOND], None, parts[RowKind.SOURCE], 1.0, generation.scale)
    z = ddim_step(source.latents[t], eps, ddim.alpha_bar(t), ddim.alpha_bar(following))
    if following is None:
        generation.clean = z
    else:
        source.latents[following] = z


def _known_at(known: dict[int, dict[int, InjectedFeatures]] | None, t: int) -> dict[int, InjectedFeatures]:
    return {j: by_timestep[t] for j, by_timestep in (known or {}).items() if t in by_timestep}
