"""Masked editing measured on the toy world: two-shape scenes with one shape recoloured inside its own mask.

Each case (``edit_case``) is a rendered two-shape scene, the shape to recolour (alternately the
first and the second), and the target scene: the source with that shape in another colour. Its
translation into the target's caption, with that shape's exact mask or without one, is judged by
the scorer (``judge``):

- kept: the other shape keeps its colour and its mask (IoU at least ``KEEP_IOU`` with its
  rendered pixels);
- background PSNR: the output against the source over the pixels outside the mask (a background
  identical to the source's counts as ``EXACT_PSNR``);
- edited: the shape inside the mask takes the target colour.

``benchmarks.toy_masks`` prints these figures for several modes, and ``tests/toy/test_masked.py``
holds them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pnp.toy import quality
from pnp.toy.scorer import mask_iou, read
from pnp.toy.world import SHAPE_COLOURS, Rendered, Scene, random_scene, render

# The first scene's seed, away from the training scenes' stream and the toy quality figures' sources.
SEED = 20_000
# A shape "keeps its mask" when its pixels in the output overlap its rendered pixels this much (IoU).
KEEP_IOU = 0.9
# The PSNR a background identical to the source's counts as (its MSE is 0): above any measured one.
EXACT_PSNR = 100.0


@dataclass(frozen=True)
class EditCase:
    """A rendered two-shape scene, which of its shapes is recoloured, and the scene it should become."""

    rendered: Rendered
    index: int
    target: Scene

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool: the recoloured shape's rendered pixels, the region the edit may change."""
        return self.rendered.masks[self.index]

    def mask_image(self) -> Image.Image:
        """The mask as the pipeline takes it: white on the recoloured shape."""
        return Image.fromarray(self.mask.astype(np.uint8) * 255, "L")


@dataclass(frozen=True)
class Judged:
    """One output's figures (see the module docstring)."""

    kept: bool
    kept_iou: float
    background_psnr: float
    edited: bool


@dataclass(frozen=True)
class MaskFigures:
    """The figures of one mode over its cases."""

    judged: tuple[Judged, ...]

    def _values(self, name: str) -> np.ndarray:
        return np.array([getattr(j, name) for j in self.judged], float)

    @property
    def kept_rate(self) -> float:
        return float(self._values("kept").mean())

    @property
    def mean_kept_iou(self) -> float:
        return float(self._values("kept_iou").mean())

    @property
    def mean_psnr(self) -> float:
        return float(self._values("background_psnr").mean())

    @property
    def min_psnr(self) -> float:
        return float(self._values("background_psnr").min())

    @property
    def edited_rate(self) -> float:
        return float(self._values("edited").mean())

    def __str__(self) -> str:
        return (
            f"kept {self.kept_rate:.1%} (IoU {self.mean_kept_iou:.3f}), background PSNR {self.mean_psnr:.2f} dB "
            f"(lowest {self.min_psnr:.2f} dB), edited {self.edited_rate:.1%} ({len(self.judged)} scenes)"
        )


def edit_case(k: int) -> EditCase:
    """Case k: scene ``SEED + k``, its shape k % 2 recoloured into a colour neither shape has (cycling by k)."""
    rendered = render(random_scene(SEED + k, shapes=2))
    index = k % 2
    used = {shape.colour for shape in rendered.scene.shapes}
    colour = [c for c in SHAPE_COLOURS if c not in used][k // 2 % (len(SHAPE_COLOURS) - len(used))]
    return EditCase(rendered, index, rendered.scene.replace_shape(index, colour=colour))


def translate(pipe, cases: Sequence[EditCase], masked: bool, **settings) -> list[Image.Image]:
    """Each case translated into its target's caption, inside its mask (``masked``) or everywhere, as
    ``pnp.toy.quality.translate`` translates (the toy figures' steps and guidance unless ``settings`` say)."""
    masks = [case.mask_image() for case in cases] if masked else None
    images, captions = [case.rendered.image for case in cases], [case.target.caption for case in cases]
    return quality.translate(pipe, images, captions, masks, **settings)


def figures(cases: Sequence[EditCase], outputs: Sequence[Image.Image]) -> MaskFigures:
    """The figures of the outputs of ``cases``, in order."""
    return MaskFigures(tuple(judge(case, output) for case, output in zip(cases, outputs, strict=True)))


def judge(case: EditCase, output: Image.Image) -> Judged:
    """How ``output`` did on ``case``: the other shape kept, the background outside the mask, the shape edited."""
    reading = read(output)
    other = 1 - case.index
    kept_reading = _matching(reading, case.rendered.masks[other])
    iou = 0.0 if kept_reading is None else mask_iou(kept_reading.mask, case.rendered.masks[other])
    kept = kept_reading is not None and kept_reading.colour == case.target.shapes[other].colour and iou >= KEEP_IOU
    edited_reading = _matching(reading, case.mask)
    edited = edited_reading is not None and edited_reading.colour == case.target.shapes[case.index].colour
    return Judged(kept, iou, background_psnr(case.rendered.image, output, case.mask), edited)


def _matching(reading, mask: np.ndarray):
    """The shape read in the output that overlaps ``mask`` most, or None if none does."""
    overlaps = [(int((shape.mask & mask).sum()), n) for n, shape in enumerate(reading.shapes)]
    best = max(overlaps, default=(0, None))
    return None if best[0] == 0 else reading.shapes[best[1]]


def background_psnr(source: Image.Image, output: Image.Image, mask: np.ndarray) -> float:
    """PSNR in dB of the output against the source over the pixels outside ``mask`` (8-bit RGB)."""
    keep = ~mask
    a = np.asarray(source.convert("RGB"), np.float64)[keep]
    b = np.asarray(output.convert("RGB"), np.float64)[keep]
    mse = float(((a - b) ** 2).mean())
    return EXACT_PSNR if mse == 0 else min(EXACT_PSNR, 10 * math.log10(255**2 / mse))
