"""Every score of a source-prompt pair, computed where the evaluation runs, whichever backend translated it.

Outputs are compared with the source at the source's size (an output of another size is resized
to it, bicubic). What is computed for each pair:
- every benchmark: ``clip_cosine`` (the paper's CLIP cosine of output and prompt), ``clip_score``
  (PIE-Bench's 100 * max(cosine, 0)), and the structure distance in the chosen variants
  (``structure_distance_splice``, ``structure_distance_pie_bench``);
- PIE-Bench also: ``clip_score_edited`` (on output x mask) and the background scores ``psnr``,
  ``lpips``, ``mse``, ``ssim``;
- a toy benchmark also (``toy``): ``toy_iou``, ``toy_colour``, ``toy_shape``, read by the toy world's scorer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from PIL import Image

from pnp.evaluation.benchmarks import Source

# The structure distance's two input scales (see ``structure``): images in 0..1, or in 0..255 as PIE-Bench's
# code feeds them.
SPLICE_INPUT = "splice"
PIE_BENCH_INPUT = "pie-bench"
STRUCTURE_VARIANTS = (SPLICE_INPUT, PIE_BENCH_INPUT)
# Column name, how PIE-Bench's table scales it (1e3: "x 10^3"), whether higher is better.
METRICS = {
    "clip_cosine": (1, True),
    "clip_score": (1, True),
    "clip_score_edited": (1, True),
    "structure_distance_splice": (1e3, False),
    "structure_distance_pie_bench": (1e3, False),
    "psnr": (1, True),
    "lpips": (1e3, False),
    "mse": (1e4, False),
    "ssim": (1e2, True),
    "toy_iou": (1, True),
    "toy_colour": (1, True),
    "toy_shape": (1, True),
}


def structure_column(variant: str) -> str:
    """The column of a structure-distance variant: 'pie-bench' -> 'structure_distance_pie_bench'."""
    return "structure_distance_" + variant.replace("-", "_")


@dataclass
class MetricSuite:
    """The loaded metric models and which structure variants to compute; ``lpips`` is None where it is unavailable;
    ``toy``: the benchmark is a toy one (``toy.is_toy``), so the toy scorer's columns are computed too."""

    clip: object  # clip.ClipSimilarity
    structure: object  # structure.StructureDistance
    variants: tuple[str, ...]
    lpips: object | None = None
    unavailable: dict[str, str] = field(default_factory=dict)  # metric -> why it is not computed
    toy: bool = False

    def score(
        self, source: Source, source_image: Image.Image, outputs: list[Image.Image]
    ) -> list[dict[str, float | None]]:
        """The scores of each output (one per prompt of ``source``), in prompt order."""
        from pnp.evaluation.background import background_scores
        from pnp.evaluation.clip import clip_score, masked
        from pnp.evaluation.piebench import decode_mask

        outputs = [same_size(output, source_image.size) for output in outputs]
        prompts = list(source.prompts)
        cosines = self.clip.cosines(outputs, prompts)
        rows = [{"clip_cosine": c, "clip_score": clip_score(c)} for c in cosines]
        for row, output in zip(rows, outputs):
            for variant in self.variants:
                row[structure_column(variant)] = self.structure.distance(source_image, output, variant)
        if source.mask is not None:
            mask = decode_mask(source.mask, source_image.height, source_image.width)
            edited = self.clip.cosines([masked(output, mask) for output in outputs], prompts)
            for row, output, cosine in zip(rows, outputs, edited):
                row["clip_score_edited"] = clip_score(cosine)
                row.update(background_scores(source_image, output, mask, self.lpips))
        if self.toy:
            from pnp.evaluation.toy import toy_scores

            for row, toy_row in zip(rows, toy_scores(source_image, outputs, prompts)):
                row.update(toy_row)
        return rows


def same_size(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` at ``size`` (resized bicubic if it differs)."""
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity: a score that is not a finite number is written as null."""
    return value if value is not None and math.isfinite(value) else None
