"""The toy model's quality figures, read by the scorer: what its tests assert and ``benchmarks.toy`` prints.

Every figure comes from fixed seeds: sources are rendered scenes of one shape on the plain
background (``cases`` of them, from ``seed``), text-to-image prompts are their captions. A
translation's output is judged against the scene it should show: the source with the shape's
colour or class changed. Its mask IoU is the output's shape pixels against the source's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from PIL import Image

from pnp.toy.scorer import judge_image
from pnp.toy.world import SHAPE_COLOURS, SHAPES, Rendered, Scene, random_scene, render

# Settings of every figure unless a caller says otherwise: the issue judges at guidance 7.5 to 10.
STEPS = 10
GUIDANCE = 7.5
# The seeds of the sources, far from the training scenes' stream (which draws from one generator).
SOURCE_SEED = 10_000


@dataclass(frozen=True)
class Figures:
    """Per-case results of one experiment: whether the main shape has the expected colour and class, and mask IoU."""

    colour: tuple[bool, ...]
    shape: tuple[bool, ...]
    iou: tuple[float, ...]

    @property
    def colour_rate(self) -> float:
        return float(np.mean(self.colour))

    @property
    def shape_rate(self) -> float:
        return float(np.mean(self.shape))

    @property
    def mean_iou(self) -> float:
        return float(np.mean(self.iou))

    def __str__(self) -> str:
        return (
            f"colour {self.colour_rate:.0%}, shape {self.shape_rate:.0%}, mean IoU {self.mean_iou:.3f} "
            f"({len(self.iou)} cases)"
        )


def sources(cases: int, seed: int = SOURCE_SEED) -> list[Rendered]:
    """``cases`` rendered one-shape scenes on the plain background."""
    return [render(random_scene(seed + k, shapes=1, background="plain")) for k in range(cases)]


def recoloured(scene: Scene, k: int) -> Scene:
    """The scene with its shape in another colour (the k-th case's choice, cycling through the others)."""
    others = [c for c in SHAPE_COLOURS if c != scene.shapes[0].colour]
    return scene.replace_shape(0, colour=others[k % len(others)])


def reshaped(scene: Scene, k: int) -> Scene:
    """The scene with its shape of another class (the k-th case's choice)."""
    others = [s for s in SHAPES if s != scene.shapes[0].kind]
    return scene.replace_shape(0, kind=others[k % len(others)])


def judge(outputs: Sequence[Image.Image], targets: Sequence[Scene], references: Sequence[np.ndarray]) -> Figures:
    """Each output's main shape against its target scene's shape, and its shape pixels against a reference mask."""
    judged = [
        judge_image(output, target.shapes[0].colour, target.shapes[0].kind, reference)
        for output, target, reference in zip(outputs, targets, references, strict=True)
    ]
    return Figures(tuple(j.colour for j in judged), tuple(j.shape for j in judged), tuple(j.iou for j in judged))


def text_to_image(
    pipe, scenes: Sequence[Scene], steps: int = STEPS, guidance: float = GUIDANCE, seed: int = 0
) -> list[Image.Image]:
    """Images generated from the scenes' captions by diffusers' own Stable Diffusion pipeline on ``pipe``'s
    components (DDIM), in one batch."""
    components = {name: getattr(pipe, name) for name in ("vae", "text_encoder", "tokenizer", "unet")}
    plain = StableDiffusionPipeline(
        **components,
        scheduler=DDIMScheduler.from_config(pipe.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    plain.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(seed)
    side = pipe.default_resolution
    return plain(
        [s.caption for s in scenes],
        height=side,
        width=side,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generator,
    ).images


def translate(
    pipe, images: Sequence[Image.Image], prompts: Sequence[str], masks: Sequence[Image.Image] | None = None, **settings
) -> list[Image.Image]:
    """Each image translated into its own prompt by ``pipe`` (inside its own mask, given ``masks``): one call per
    distinct prompt, with all its images."""
    settings = {"num_inference_steps": STEPS, "guidance_scale": GUIDANCE, **settings}
    outputs: list[Image.Image | None] = [None] * len(images)
    for prompt in dict.fromkeys(prompts):
        indices = [k for k, p in enumerate(prompts) if p == prompt]
        called = None if masks is None else [masks[k] for k in indices]
        result = pipe(prompt=prompt, image=[images[k] for k in indices], mask_image=called, **settings)
        for k, image in zip(indices, result.images, strict=True):
            outputs[k] = image
    return outputs


def translation_figures(
    pipe, rendered: Sequence[Rendered], change: Callable[[Scene, int], Scene] | None, **settings
) -> tuple[Figures, list[Image.Image]]:
    """Translate each source into the caption of ``change(scene, k)`` (None: its own caption) and judge it."""
    targets = [change(r.scene, k) if change else r.scene for k, r in enumerate(rendered)]
    outputs = translate(pipe, [r.image for r in rendered], [t.caption for t in targets], **settings)
    return judge(outputs, targets, [r.mask for r in rendered]), outputs


def text_to_image_figures(pipe, rendered: Sequence[Rendered], **settings) -> Figures:
    """Colour and class rates of images generated from the sources' captions (IoU against the source means little)."""
    scenes = [r.scene for r in rendered]
    return judge(text_to_image(pipe, scenes, **settings), scenes, [r.mask for r in rendered])


NO_INJECTION = {"feature_injection_threshold": 0.0, "attention_injection_threshold": 0.0}
TRADE_OFF = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # feature_injection_thresholds of the trade-off curve


def trade_off_name(threshold: float) -> str:
    return f"colour change, feature injection {threshold:g}"


def report(
    pipe, cases: int = 32, echo: Callable[[str], None] = print, trade_off: Sequence[float] = TRADE_OFF, **settings
) -> dict[str, Figures]:
    """Measure every figure on ``cases`` sources (``settings`` apply to every call) and print it.

    Returns the figures by name."""
    rendered = sources(cases)
    steps = {"steps": settings["num_inference_steps"]} if "num_inference_steps" in settings else {}
    figures = {"text to image": text_to_image_figures(pipe, rendered, **steps)}
    echo(f"text to image: {figures['text to image']}")
    experiments = {
        "reconstruction": (None, {}),
        "colour change": (recoloured, {}),
        "colour change without injection": (recoloured, NO_INJECTION),
        "shape change": (reshaped, {}),
    }
    for name, (change, overrides) in experiments.items():
        figures[name], _ = translation_figures(pipe, rendered, change, **{**settings, **overrides})
        echo(f"{name}: {figures[name]}")
    for threshold in trade_off:
        name = trade_off_name(threshold)
        figures[name], _ = translation_figures(
            pipe, rendered, recoloured, **{**settings, "feature_injection_threshold": threshold}
        )
        echo(f"{name}: {figures[name]}")
    return figures
