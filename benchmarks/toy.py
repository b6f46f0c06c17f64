"""Every quality figure of the toy model, and the README's two toy figures.

    python -m benchmarks.toy                      # 96 cases per figure; about ... on 2 CPU cores
    python -m benchmarks.toy --cases 32 --no-figures

Prints text-to-image colour and shape rates, reconstruction IoU, colour and shape changes with
and without injection, and the trade-off of ``feature_injection_threshold`` (``pnp.toy.quality``,
judged by ``pnp.toy.scorer``). Draws ``docs/toy-trade-off.png`` (mask IoU and target-colour rate
against the threshold) and ``docs/toy-translations.webp`` (rendered sources beside their
translations).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DOCS = Path(__file__).resolve().parents[1] / "docs"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=96, help="sources per figure (default 96)")
    parser.add_argument("--steps", type=int, default=None, help="sampling and inversion steps (default: the tests')")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--no-figures", action="store_true", help="print the figures only; draw nothing")
    parser.add_argument("--out", type=Path, default=DOCS, help="folder for the two images (default: docs/)")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error(f"--cases: {args.cases} is not a positive whole number")

    from pnp.environment import configure_libraries

    configure_libraries()
    import torch

    from pnp import PnPPipeline
    from pnp.toy import quality

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {} if args.steps is None else {"num_inference_steps": args.steps}
    start = time.perf_counter()
    pipe = PnPPipeline.from_pretrained("toy", device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    print(f"toy model, {args.cases} cases per figure, {torch.get_num_threads()} torch threads", flush=True)
    figures = quality.report(pipe, cases=args.cases, echo=lambda line: print(line, flush=True), **settings)
    print(f"measured in {time.perf_counter() - start:.0f} s")
    if args.no_figures:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    curve = [(t, figures[quality.trade_off_name(t)]) for t in quality.TRADE_OFF]
    plot = trade_off_plot([t for t, _ in curve], [f.mean_iou for _, f in curve], [f.colour_rate for _, f in curve])
    plot.save(args.out / "toy-trade-off.png", optimize=True)
    sheet = translation_sheet(pipe, **settings)
    sheet.save(args.out / "toy-translations.webp", quality=90, method=6)
    print(f"wrote {args.out / 'toy-trade-off.png'} and {args.out / 'toy-translations.webp'}")


def translation_sheet(pipe, **settings) -> Image.Image:
    """Rows of rendered sources, each beside its translations into a colour change and a shape change."""
    from pnp.toy import quality

    rendered = quality.sources(4, seed=quality.SOURCE_SEED + 500)
    columns = [("source", None), ("colour", quality.recoloured), ("shape", quality.reshaped)]
    outputs = {
        name: quality.translation_figures(pipe, rendered, change, **settings)[1] for name, change in columns if change
    }
    side, label = rendered[0].image.width, 14
    sheet = Image.new("RGB", (side * len(columns), (side + label) * len(rendered)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, source in enumerate(rendered):
        top = row * (side + label)
        for col, (name, change) in enumerate(columns):
            image = source.image if change is None else outputs[name][row]
            caption = source.scene.caption if change is None else change(source.scene, row).caption
            sheet.paste(image, (col * side, top + label))
            draw.text((col * side + 2, top + 1), caption.removeprefix("a "), fill="black")
    return sheet


def trade_off_plot(thresholds: list[float], iou: list[float], colour: list[float], size=(420, 280)) -> Image.Image:
    """Mask IoU with the source and target-colour rate against feature_injection_threshold, both in [0, 1]."""
    width, height = size
    left, right, top, bottom = 44, 12, 26, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)

    def at(x: float, y: float) -> tuple[float, float]:
        return left + x * (width - left - right), top + (1 - y) * (height - top - bottom)

    for tick in np.linspace(0, 1, 6):
        draw.line([at(0, tick), at(1, tick)], fill=(225, 225, 225))
        draw.text((4, at(0, tick)[1] - 6), f"{tick:.1f}", fill="black")
        draw.text((at(tick, 0)[0] - 8, height - bottom + 6), f"{tick:.1f}", fill="black")
    draw.rectangle([at(0, 1), at(1, 0)], outline="black")
    draw.text((left, height - 16), "feature_injection_threshold", fill="black")
    for values, colour_, name, dx in (
        (iou, (30, 60, 220), "mask IoU with the source", 0),
        (colour, (220, 30, 30), "target-colour rate", 190),
    ):
        points = [at(x, y) for x, y in zip(thresholds, values)]
        draw.line(points, fill=colour_, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour_)
        draw.line([(left + dx, 12), (left + dx + 16, 12)], fill=colour_, width=2)
        draw.text((left + dx + 20, 6), name, fill="black")
    return image


if __name__ == "__main__":
    sys.exit(main())
