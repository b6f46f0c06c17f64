"""The toy benchmark: a TI2I file whose every target prompt is a one-shape caption of the toy world (``pnp.toy``).

Such a benchmark (``benchmarks/samples/toy/toy.yaml``) is also scored by the toy world's own
reader, ``pnp.toy.scorer``, which needs no model: each output's main shape against the colour and
class its prompt names, and its shape pixels against the source's. These columns are added beside
the usual ones; a benchmark with any other prompt has none of them.
"""

from __future__ import annotations

from PIL import Image

from pnp.evaluation.benchmarks import Benchmark
from pnp.toy.scorer import judge_image, read
from pnp.toy.world import parse_caption

# toy_iou: the output's shape pixels against the source's; toy_colour, toy_shape: 1 where the output's main
# shape has the prompt's colour, its class, else 0 (so their means are rates).
TOY_METRICS = ("toy_iou", "toy_colour", "toy_shape")


def is_toy(benchmark: Benchmark) -> bool:
    """Whether every target prompt of ``benchmark`` is a caption of one toy shape: the rule for the toy columns."""
    return all(_one_shape(prompt) for source in benchmark.sources for prompt in source.prompts)


def _one_shape(prompt: str) -> bool:
    caption = parse_caption(prompt)
    return caption is not None and len(caption.shapes) == 1


def toy_scores(source_image: Image.Image, outputs: list[Image.Image], prompts: list[str]) -> list[dict[str, float]]:
    """The toy columns of each output (at the source's size) against its prompt, in prompt order."""
    # The source's shape pixels as the scorer reads them: a benchmark image carries no exact mask.
    reference = read(source_image).mask
    rows = []
    for output, prompt in zip(outputs, prompts, strict=True):
        ((colour, kind),) = parse_caption(prompt).shapes
        judged = judge_image(output, colour, kind, reference)
        rows.append({"toy_iou": judged.iou, "toy_colour": float(judged.colour), "toy_shape": float(judged.shape)})
    return rows
