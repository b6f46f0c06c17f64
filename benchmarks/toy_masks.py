"""Masked editing measured on the toy model: two-shape scenes, one shape recoloured inside its own mask.

    python -m benchmarks.toy_masks                       # 32 scenes; the figures of issue 20
    python -m benchmarks.toy_masks --figure docs/toy-masks.webp   # also the figure README shows

Each scene (``pnp.toy.world``, two shapes) is translated into its caption with one shape's colour
changed, without a mask and with that shape's exact mask, in several modes: latent blending at a
few ``mask_blend_threshold`` values, and blending with the pixel paste. ``pnp.toy.scorer`` reads
each output. Printed per mode:

- kept: how often the shape outside the mask keeps its colour and its mask (IoU at least ``KEEP_IOU``
  with its rendered pixels), and its mean IoU;
- background PSNR: between the output and the source over the pixels outside the mask (mean and
  lowest over the scenes; a scene whose background is exact counts as ``EXACT_PSNR``);
- edited: how often the shape inside the mask takes the target colour.

A first row judges the source's own VAE reconstruction (decoded from its encoding) as the "output":
what latent blending to the end can keep at best, since it keeps the source's latents, decoded.

Needs the toy model and its world (``pnp.toy``, from the toy-model issue). With ``--figure``, draws a
few scenes: source, mask, then the outputs of each mode.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# The first scene's seed, away from the training scenes' stream and the toy quality figures' sources.
SEED = 20_000
STEPS = 10  # as the toy model's quality figures (pnp.toy.quality)
GUIDANCE = 7.5
# A shape "keeps its mask" when its pixels in the output overlap its rendered pixels this much (IoU).
KEEP_IOU = 0.9
# The PSNR a background identical to the source's counts as (its MSE is 0): above any measured one.
EXACT_PSNR = 100.0
MODES = {
    "no mask": None,
    "blend, threshold 0.6": dict(mask_blend_threshold=0.6),
    "blend, threshold 0.8": dict(mask_blend_threshold=0.8),
    "blend, threshold 1.0": dict(mask_blend_threshold=1.0),
    "blend 1.0 + paste": dict(mask_blend_threshold=1.0, mask_paste=True),
    "blend 1.0 + paste, feather 2": dict(mask_blend_threshold=1.0, mask_paste=True, mask_feather=2),
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
    print_row("VAE reconstruction", [judge(case, reconstruction(pipe, case[0].image)) for case in cases])
    outputs = {}
    for name, settings in MODES.items():
        outputs[name] = [translate(pipe, case, settings, args.steps) for case in cases]
        print_row(name, [judge(case, output) for case, output in zip(cases, outputs[name])])
    print(f"measured in {time.perf_counter() - start:.0f} s")
    if args.figure:
        figure(cases[:4], {name: images[:4] for name, images in outputs.items()}).save(args.figure, optimize=True)
        print(f"wrote {args.figure}")


def print_row(name: str, judged: list[tuple]) -> None:
    kept, iou, psnr, edited = (np.array(values, float) for values in zip(*judged))
    print(
        f"{name:30} {kept.mean():6.1%} {iou.mean():9.3f} {psnr.mean():10.2f} dB {psnr.min():9.2f} dB "
        f"{edited.mean():7.1%}",
        flush=True,
    )


def reconstruction(pipe, image: Image.Image) -> Image.Image:
    """``image`` encoded and decoded by the model's VAE."""
    import torch

    from pnp.method.vae import decode, encode, image_to_tensor

    with torch.inference_mode():
        decoded = decode(pipe.vae, encode(pipe.vae, image_to_tensor(image)))
    return pipe.image_processor.postprocess(decoded, output_type="pil")[0]


def edit_case(k: int):
    """Scene k: rendered, the shape to recolour (alternately the first and second), its target colour and mask."""
    from pnp.toy.world import SHAPE_COLOURS, random_scene, render

    rendered = render(random_scene(SEED + k, shapes=2))
    index = k % 2
    used = {shape.colour for shape in rendered.scene.shapes}
    colour = [c for c in SHAPE_COLOURS if c not in used][k // 2 % (len(SHAPE_COLOURS) - len(used))]
    target = rendered.scene.replace_shape(index, colour=colour)
    return rendered, index, target


def translate(pipe, case, settings: dict | None, steps: int) -> Image.Image:
    rendered, index, target = case
    mask = None if settings is None else Image.fromarray(rendered.masks[index].astype(np.uint8) * 255, "L")
    result = pipe(
        prompt=target.caption,
        image=rendered.image,
        mask_image=mask,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        **(settings or {}),
    )
    return result.images[0]


def judge(case, output: Image.Image) -> tuple[bool, float, float, bool]:
    """(kept, kept shape's IoU, background PSNR outside the mask, edited shape has the target colour)."""
    from pnp.toy.scorer import mask_iou, read

    rendered, index, target = case
    reading = read(output)
    other = 1 - index
    kept_reading = _matching(reading, rendered.masks[other])
    iou = 0.0 if kept_reading is None else mask_iou(kept_reading.mask, rendered.masks[other])
    kept = kept_reading is not None and kept_reading.colour == target.shapes[other].colour and iou >= KEEP_IOU
    edited_reading = _matching(reading, rendered.masks[index])
    edited = edited_reading is not None and edited_reading.colour == target.shapes[index].colour
    return kept, iou, background_psnr(rendered.image, output, rendered.masks[index]), edited


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


def figure(cases, outputs: dict[str, list[Image.Image]]) -> Image.Image:
    """One row per scene: the source, its mask, then each mode's output, under a header naming the columns."""
    side, header = cases[0][0].image.width, 28
    titles = ["source", "mask", *outputs]
    sheet = Image.new("RGB", (side * len(titles), header + side * len(cases)), "white")
    draw = ImageDraw.Draw(sheet)
    for column, title in enumerate(titles):
        for line, words in enumerate(_two_lines(title)):
            draw.text((column * side + 4, 2 + line * 12), words, fill="black")
    for row, (rendered, index, _) in enumerate(cases):
        mask = Image.fromarray(rendered.masks[index].astype(np.uint8) * 255, "L").convert("RGB")
        images = [rendered.image, mask, *(images[row] for images in outputs.values())]
        for column, image in enumerate(images):
            sheet.paste(image.convert("RGB").resize((side, side)), (column * side, header + row * side))
    return sheet


def _two_lines(title: str) -> list[str]:
    head, _, tail = title.partition(", ")
    return [head, tail] if tail else [title]


if __name__ == "__main__":
    main()
