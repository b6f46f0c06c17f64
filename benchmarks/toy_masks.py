"""Masked editing measured on the toy model: two-shape scenes, one shape recoloured inside its own mask.

    python -m benchmarks.toy_masks                       # 32 scenes; the figures of issue 20
    python -m benchmarks.toy_masks --figure docs/toy-masks.webp   # also the figure README shows

Each scene (``pnp.toy.masked``: two shapes) is translated into its caption with one shape's colour
changed, without a mask and with that shape's exact mask, in several modes: latent blending at a
few ``mask_blend_threshold`` values, and blending with the pixel paste. Printed per mode, as
``pnp.toy.masked`` defines them: how often the shape outside the mask is kept (and its mean IoU),
the background PSNR outside the mask (mean and lowest over the scenes), and how often the shape
inside the mask takes the target colour.

A first row judges the source's own VAE reconstruction (decoded from its encoding) as the "output":
what latent blending to the end can keep at best, since it keeps the source's latents, decoded.

Needs the toy model and its world (``pnp.toy``, from the toy-model issue). With ``--figure``, draws a
few scenes: source, mask, then the outputs of each mode.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from PIL import Image, ImageDraw

from pnp.toy.masked import EditCase, MaskFigures, edit_case, figures, translate
from pnp.toy.quality import GUIDANCE, STEPS

MODES = {
    "no mask": None,
    "blend, threshold 0.6": dict(mask_blend_threshold=0.6),
    "blend, threshold 0.8": dict(mask_blend_threshold=0.8),
    "blend, threshold 1.0": dict(mask_blend_threshold=1.0),
    "blend 1.0 + paste": dict(mask_blend_threshold=1.0, mask_paste=True),
    "blend 1.0 + paste, feather 2": dict(mask_blend_threshold=1.0, mask_paste=True, mask_feather=2),
    "blend 1.0 + paste, feather 1": dict(mask_blend_threshold=1.0, mask_paste=True, mask_feather=1),
    "blend 1.0 + paste, feather 0": dict(mask_blend_threshold=1.0, mask_paste=True, mask_feather=0),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=32, help="scenes (default 32)")
    parser.add_argument("--model", default="toy", help="the toy model: its name or folder (default: toy)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"sampling and inversion steps (default {STEPS})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--figure", type=Path, default=None, help="also draw a few scenes into this PNG")
    args = parser.parse_args(argv)

    from pnp.environment import configure_libraries

    configure_libraries()
    import torch

    from pnp import PnPPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pipe = PnPPipeline.from_pretrained(args.model, device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    cases = [edit_case(k) for k in range(args.cases)]
    print(f"toy model {args.model}: {args.cases} two-shape scenes, {args.steps} steps, guidance {GUIDANCE}")
    print(f"{'mode':30} {'kept':>6} {'kept IoU':>9} {'bg PSNR mean':>13} {'bg PSNR min':>12} {'edited':>7}")
    print_row("VAE reconstruction", figures(cases, [reconstruction(pipe, case.rendered.image) for case in cases]))
    outputs = {}
    for name, settings in MODES.items():
        outputs[name] = translate(pipe, cases, settings is not None, num_inference_steps=args.steps, **(settings or {}))
        print_row(name, figures(cases, outputs[name]))
    print(f"measured in {time.perf_counter() - start:.0f} s")
    if args.figure:
        figure(cases[:4], {name: images[:4] for name, images in outputs.items()}).save(args.figure, optimize=True)
        print(f"wrote {args.figure}")


def print_row(name: str, measured: MaskFigures) -> None:
    m = measured
    print(
        f"{name:30} {m.kept_rate:6.1%} {m.mean_kept_iou:9.3f} {m.mean_psnr:10.2f} dB {m.min_psnr:9.2f} dB "
        f"{m.edited_rate:7.1%}",
        flush=True,
    )


def reconstruction(pipe, image: Image.Image) -> Image.Image:
    """``image`` encoded and decoded by the model's VAE."""
    import torch

    from pnp.method.vae import decode, encode, image_to_tensor

    with torch.inference_mode():
        decoded = decode(pipe.vae, encode(pipe.vae, image_to_tensor(image)))
    return pipe.image_processor.postprocess(decoded, output_type="pil")[0]


def figure(cases: list[EditCase], outputs: dict[str, list[Image.Image]]) -> Image.Image:
    """One row per scene: the source, its mask, then each mode's output, under a header naming the columns."""
    side, header = cases[0].rendered.image.width, 28
    titles = ["source", "mask", *outputs]
    sheet = Image.new("RGB", (side * len(titles), header + side * len(cases)), "white")
    draw = ImageDraw.Draw(sheet)
    for column, title in enumerate(titles):
        for line, words in enumerate(_two_lines(title)):
            draw.text((column * side + 4, 2 + line * 12), words, fill="black")
    for row, case in enumerate(cases):
        images = [case.rendered.image, case.mask_image(), *(images[row] for images in outputs.values())]
        for column, image in enumerate(images):
            sheet.paste(image.convert("RGB").resize((side, side)), (column * side, header + row * side))
    return sheet


def _two_lines(title: str) -> list[str]:
    head, _, tail = title.partition(", ")
    return [head, tail] if tail else [title]


if __name__ == "__main__":
    main()
