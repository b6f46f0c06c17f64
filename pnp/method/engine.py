"""The engine run: one call's work in the method's order, the sources' trajectories, then their translation.

A pipeline call builds one ``EngineRun`` (its configuration, the model's schedule and noise predictor,
the encoded prompts, where to inject, the step callbacks and the metrics) and hands it the call's
sources group by group (sources of one working size share their UNet calls, ``pnp.method.sources``):

    run.trajectories(group)             # invert the uncached images together, or generate the source
    translated = run.translate(group)   # every target sampled together, each source's features injected
    run.keep(group, translated)         # the source cache keeps each trajectory and the features computed

A translation step runs the UNet calls of its entry in the plan (``pnp.method.plan``), each with
its rows in the order of ``UNetCall.layout``: guidance combines a target's rows, a DDIM step moves
it to the next timestep, and once every call of the step has run the step's callback sees the
targets' latents at that next timestep.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch

from pnp.config import PnPConfig
from pnp.messages import plural
from pnp.method.cache import SourceCache
from pnp.method.ddim import DDIMSchedule, StepEnd, ddim_step
from pnp.method.generation import generate
from pnp.method.guidance import guided_noise
from pnp.method.injection import FeatureInjector, InjectedFeatures
from pnp.method.inversion import invert
from pnp.method.layers import InjectionLayers
from pnp.method.noise_predictor import NoisePredictor
from pnp.method.plan import Known, Row, RowKind, TranslationStep, UNetCall, translation_plan
from pnp.method.sources import SourceGroup
from pnp.method.text import Prompts, TextEmbeddings
from pnp.method.trajectory import Trajectory
from pnp.method.vae import encode, image_to_tensor

logger = logging.getLogger("pnp.engine")


class Observer(Protocol):
    """Told each source trajectory once it is made, then (``before_call``) about every translation UNet call.

    The feature capture of ``pnp.visual`` is one. With an observer, a generated source is made before
    the translation, not fused into it, so that its trajectory is complete when the observer hears of it.
    """

    def source_ready(self, trajectory: Trajectory) -> None: ...

    def before_call(self, step: TranslationStep, call: UNetCall) -> None: ...


class StepCallbacks(Protocol):
    """What runs after every step: ``phase`` gives the ``StepEnd`` of one loop; ``stopped``: whether to stop;
    ``changed``: whether the last phase's callbacks changed its latents (a changed trajectory is not cached)."""

    def phase(self, name: str, steps: int) -> AbstractContextManager[StepEnd]: ...

    @property
    def stopped(self) -> bool: ...

    changed: bool


class Metrics:
    """What a call did: its UNet calls and rows, its cache hits, and the seconds each phase took."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.values: dict[str, float] = {"cache_hits": 0}

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the GPU's work is done, not just queued
        self.values[name] = time.perf_counter() - start


@dataclass
class Translated:
    """A group's translation: the targets' final latents, in (image, prompt) order, and the features its source rows
    computed."""

    latents: torch.Tensor
    injected: dict[int, dict[int, InjectedFeatures]] = field(default_factory=dict)  # source -> timestep -> features


@dataclass
class EngineRun:
    """One pipeline call's method: what it computes (``config``), with which model parts, reporting to whom."""

    config: PnPConfig
    schedule: DDIMSchedule
    predict: NoisePredictor
    prompts: Prompts
    layers: InjectionLayers  # where the sources' features are injected
    vae: torch.nn.Module
    vae_float32: bool  # the VAE runs in float32 whatever its dtype (SDXL's overflows in float16)
    cache: SourceCache
    callbacks: StepCallbacks
    metrics: Metrics
    observer: Observer | None = None
    injector: FeatureInjector | None = None  # the hooks already installed on a compiled UNet

    @property
    def stopped(self) -> bool:
        return self.callbacks.stopped

    def steps(self, group: SourceGroup) -> int:
        """The steps a group takes: the inversion of its uncached images (or a separate generation), then the
        translation."""
        steps = self.config.num_inference_steps
        if not group.misses or group.fused:
            return steps
        if group.noise is not None:
            return 2 * steps
        noisiest = self.schedule.timesteps(steps)[0]
        return len(self.schedule.inversion_timesteps(self.config.num_inversion_steps, up_to=noisiest)) + steps

    # --- The sources' trajectories ---

    def trajectories(self, group: SourceGroup) -> None:
        """Invert the group's uncached images together, or generate its uncached source (unless it is fused).

        The observer then hears of every trajectory, cached or not.
        """
        if self.stopped:
            return
        if not group.misses:
            logger.info(
                f"{plural(len(group.hits), 'source')} from the source cache: no encoding, inversion or generation"
            )
        elif group.noise is None:
            self._invert(group)
        elif not group.fused:
            self._generate(group)
        if self.observer is not None and not self.stopped:
            for trajectory in group.trajectories:
                self.observer.source_ready(trajectory)

    def _invert(self, group: SourceGroup) -> None:
        misses = group.misses
        device = self.predict.unet.device
        with self.metrics.timed("encode_s"):
            pixels = [image_to_tensor(group.pictures[k]).to(device) for k in misses]
            latent = torch.cat([encode(self.vae, p, self.vae_float32) for p in pixels])
        steps = self.steps(group) - self.config.num_inference_steps
        with self.metrics.timed("inversion_s"), self.callbacks.phase("inversion", steps) as step_end:
            latents = invert(
                self.predict,
                self.schedule,
                latent,
                self.prompts.uncond.expand(len(misses)),
                self.config.num_inference_steps,
                self.config.num_inversion_steps,
                step_end,
            )
        for n, k in enumerate(misses):
            group.trajectories[k].latents.update({t: z[n : n + 1] for t, z in latents.items()})
        group.changed_by_callback = self.callbacks.changed

    def _generate(self, group: SourceGroup) -> None:
        source = group.trajectories[0]
        steps = self.config.num_inference_steps
        with self.metrics.timed("generation_s"), self.callbacks.phase("generation", steps) as step_end:
            latents, group.clean = generate(
                self.predict,
                self.schedule,
                group.noise,
                self.prompts.uncond,
                source.embedding,
                steps,
                self.config.generation_guidance_scale,
                step_end,
            )
        source.latents.update(latents)
        group.changed_by_callback = self.callbacks.changed

    # --- The translation ---

    def translate(self, group: SourceGroup) -> Translated:
        """Sample one latent per target, each (source, prompt) pair of the group, from its source's noisiest latent.

        Source j's features at timestep t are injected into its targets: computed by its source row,
        or, where the cache holds them, taken from there (the plan then leaves that row out). A fused
        generation advances the generated source in the same calls, recording its latents into its
        trajectory as the loop makes them. A stop from the callbacks returns the latents as they are.
        """
        sources, count = group.trajectories, len(self.prompts.targets)
        known = group.known_injected()
        plan = translation_plan(
            self.config,
            len(sources),
            self._cached(group),
            group.fused,
            self.schedule.num_train_timesteps,
            self.schedule.steps_offset,
        )
        first = plan[0].timestep
        if group.fused:
            sources[0].latents[first] = group.noise
        x = torch.cat([source.latents[first].expand(count, -1, -1, -1) for source in sources])
        translated = Translated(x)
        following = [step.timestep for step in plan[1:]] + [None]
        with (
            self.metrics.timed("translation_s"),
            self.callbacks.phase("translation", len(plan)) as step_end,
            self._injecting() as injector,
        ):
            for step, t_next in zip(plan, following):
                t = step.timestep
                injector.start_step(step.residual, step.attention, {j: f[t] for j, f in known.items() if t in f})
                for call in step.calls:
                    injector.set_call(call.layout, x.device)
                    if self.observer is not None:
                        self.observer.before_call(step, call)
                    eps = self.predict(*self._rows(call, t, x, group))
                    injector.check_call()
                    x = self._denoise(call, step, eps, x, t_next, group)
                for j, features in injector.computed.items():
                    translated.injected.setdefault(j, {})[t] = features
                # Every target is at t_next now (clean after the last step): the one place for what acts on a
                # whole step's latents, before the step's callback sees them.
                if (x := step_end(step.index, t, x)) is None:
                    break
                translated.latents = x
        return translated

    def _cached(self, group: SourceGroup) -> Known:
        """Whether the cache holds every feature source j needs at timestep t with these injections active."""

        def known(j: int, t: int, residual: bool, attention: bool) -> bool:
            entry = group.entries[j]
            return entry is not None and entry.holds(t, self.layers.feature_names(residual, attention))

        return known

    def _rows(self, call: UNetCall, t: int, x: torch.Tensor, group: SourceGroup):
        """The latents and text embeddings of every row of ``call``, in its layout's order, and the timestep."""
        count, sources = len(self.prompts.targets), group.trajectories
        latents, texts = [], []
        for row in call.layout:
            if row.kind is RowKind.GENERATION_UNCOND:
                latents.append(sources[0].latents[t][0])
                texts.append(self.prompts.uncond)
            elif row.kind is RowKind.SOURCE:
                latents.append(sources[row.image].latents[t][0])
                texts.append(sources[row.image].embedding)
            else:
                latents.append(x[row.image * count + row.prompt])
                texts.append(_target_text(row, self.prompts))
        return torch.stack(latents), t, TextEmbeddings.cat(texts)

    def _denoise(
        self,
        call: UNetCall,
        step: TranslationStep,
        eps: torch.Tensor,
        x: torch.Tensor,
        t_next: int | None,
        group: SourceGroup,
    ) -> torch.Tensor:
        """Guidance per target from its rows of ``eps``, then the DDIM step to ``t_next`` of the call's targets (and
        generation)."""
        t = step.timestep
        parts = _by_kind(call, eps)
        guided = guided_noise(
            parts.get(RowKind.TARGET_UNCOND),
            parts.get(RowKind.TARGET_NEGATIVE),
            parts[RowKind.TARGET_COND],
            step.alpha,
            self.config.guidance_scale,
        )
        rows = [j * len(self.prompts.targets) + p for j, p in call.targets]
        x[rows] = ddim_step(x[rows], guided, self.schedule.alpha_bar(t), self.schedule.alpha_bar(t_next))
        if call.generation:
            self._advance_generation(group, parts, t, t_next)
        return x

    def _advance_generation(self, group: SourceGroup, parts, t: int, t_next: int | None) -> None:
        """One step of the fused generation: guidance between its two rows, then DDIM; the new latent is recorded."""
        source = group.trajectories[0]
        eps = guided_noise(
            parts[RowKind.GENERATION_UNCOND], None, parts[RowKind.SOURCE], 1.0, self.config.generation_guidance_scale
        )
        z = ddim_step(source.latents[t], eps, self.schedule.alpha_bar(t), self.schedule.alpha_bar(t_next))
        if t_next is None:
            group.clean = z
        else:
            source.latents[t_next] = z

    @contextmanager
    def _injecting(self) -> Iterator[FeatureInjector]:
        """The compiled UNet's installed injector, idle again afterwards; or new hooks, removed afterwards."""
        if self.injector is None:
            with FeatureInjector(self.predict.unet, self.layers) as injector:
                yield injector
            return
        try:
            yield self.injector
        finally:
            self.injector.idle()

    # --- What the cache keeps ---

    def keep(self, group: SourceGroup, translated: Translated) -> None:
        """Put every source of the group into the cache, with the features its rows computed in this call."""
        group.remember(self.cache, translated.injected, self.predict.unet.device)


def _target_text(row: Row, prompts: Prompts) -> TextEmbeddings:
    """The text of a target's row: its prompt, the unconditional text or the negative prompt."""
    if row.kind is RowKind.TARGET_COND:
        return prompts.targets[row.prompt]
    return prompts.uncond if row.kind is RowKind.TARGET_UNCOND else prompts.negative


def _by_kind(call: UNetCall, eps: torch.Tensor) -> dict[RowKind, torch.Tensor]:
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
