"""Write the evaluation samples in benchmarks/samples/: a small TI2I yaml, a three-image PIE-Bench folder and the
toy benchmark.

Our own synthetic images (flat shapes, a few KB each) and prompts, in the real benchmarks'
formats, so that `python -m pnp evaluate benchmarks/samples/ti2i/ti2i-sample.yaml --model tiny`
(or .../pie-bench) runs on a fresh clone. The toy benchmark (toy/toy.yaml, TI2I format) holds scenes
of the toy world (``pnp.toy``) and captions of that world as prompts, for `--model toy`, which
evaluate scores with the toy world's scorer too. The committed files are this script's output:

    python scripts/make_evaluation_samples.py [--out benchmarks/samples]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
PIE_SIDE = 512  # PIE-Bench's masks are run-length encoded over 512x512 images
TI2I_SIDE = 128
TOY_CASES = 8


def shapes(side: int, background: str, draw_shape) -> tuple[Image.Image, np.ndarray]:
    """An RGB image with one flat shape on a flat background, and the shape's mask (1 inside)."""
    image = Image.new("RGB", (side, side), background)
    mask = Image.new("L", (side, side), 0)
    draw_shape(ImageDraw.Draw(image), ImageDraw.Draw(mask))
    return image, (np.asarray(mask) > 0).astype(np.uint8)


def circle(fill: str, box: tuple[int, int, int, int]):
    return lambda image, mask: (image.ellipse(box, fill=fill), mask.ellipse(box, fill=255))


def polygon(fill: str, points: list[tuple[int, int]]):
    return lambda image, mask: (image.polygon(points, fill=fill), mask.polygon(points, fill=255))


def house(side: int):
    """A house: a wall and a roof (the mask covers the roof only, the part an edit changes)."""
    s = side / 128

    def draw(image, mask):
        image.rectangle([32 * s, 64 * s, 96 * s, 112 * s], fill="white")
        image.rectangle([56 * s, 84 * s, 72 * s, 112 * s], fill="saddlebrown")
        roof = [(24 * s, 64 * s), (64 * s, 24 * s), (104 * s, 64 * s)]
        image.polygon(roof, fill="black")
        mask.polygon(roof, fill=255)

    return draw


def run_length(mask: np.ndarray) -> list[int]:
    """PIE-Bench's encoding: [start, length] pairs of the runs of 1 in the flattened mask."""
    flat = np.concatenate([[0], mask.reshape(-1), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[0::2], edges[1::2]
    return [int(v) for pair in zip(starts, ends - starts) for v in pair]


def star(center: float, outer: float, inner: float) -> list[tuple[float, float]]:
    angles = np.arange(10) * np.pi / 5 - np.pi / 2
    radii = np.where(np.arange(10) % 2 == 0, outer, inner)
    return [(center + r * np.cos(a), center + r * np.sin(a)) for a, r in zip(angles, radii)]


def write_pie_bench(folder: Path) -> None:
    s = PIE_SIDE
    entries = {
        "000000000000": (
            "a red circle on a blue background",
            "a [green] circle on a blue background",
            "make the circle green",
            "6",
            "circle",
            shapes(s, "royalblue", circle("red", (128, 128, 384, 384))),
        ),
        "100000000000": (
            "a white house with a black roof",
            "a white house with a [red] roof",
            "paint the roof red",
            "6",
            "roof",
            shapes(s, "skyblue", house(s)),
        ),
        "900000000000": (
            "a purple star on an orange background",
            "a purple star on an orange background [in the style of a watercolor painting]",
            "make it a watercolor painting",
            "9",
            "star",
            shapes(s, "orange", polygon("purple", star(s / 2, 200, 80))),
        ),
    }
    images = folder / "annotation_images"
    images.mkdir(parents=True, exist_ok=True)
    mapping = {}
    for key, (original, editing, instruction, kind, word, (image, mask)) in entries.items():
        name = f"{key}.png"
        image.save(images / name, optimize=True)
        mapping[key] = {
            "image_path": name,
            "original_prompt": original,
            "editing_prompt": editing,
            "editing_instruction": instruction,
            "editing_type_id": kind,
            "blended_word": word,
            "mask": run_length(mask),
        }
    # One line per entry: readable, and the long masks do not take a line per number.
    lines = [f"  {json.dumps(key)}: {json.dumps(entry)}" for key, entry in mapping.items()]
    (folder / "mapping_file.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")


def write_ti2i(folder: Path) -> None:
    s = TI2I_SIDE
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    shapes(s, "royalblue", circle("red", (32, 32, 96, 96)))[0].save(images / "circle.png", optimize=True)
    shapes(s, "skyblue", house(s))[0].save(images / "house.png", optimize=True)
    (folder / "ti2i-sample.yaml").write_text(
        "# A TI2I-format sample (real images and one generated source), made by scripts/make_evaluation_samples.py.\n"
        "- init_img: images/circle.png\n"
        "  source_prompt: a red circle on a blue background\n"
        "  target_prompts:\n"
        "    - a red apple on a blue tablecloth\n"
        "    - a sunset over the sea\n"
        "- init_img: images/house.png\n"
        "  target_prompts:\n"
        "    - a photo of a cottage with a thatched roof\n"
        "    - a lego house\n"
        "- source_prompt: a photo of a horse in a field\n"
        "  seed: 7\n"
        "  scale: 5\n"
        "  ddim_steps: 10\n"
        "  target_prompts:\n"
        "    - a photo of a zebra in a field\n"
        "    - a photo of a robot horse in a field\n"
    )


def write_toy(folder: Path, cases: int = TOY_CASES) -> None:
    """The first ``cases`` sources of the toy model's quality figures, each to be recoloured and reshaped as those
    figures change it (``pnp.toy.quality``), so that a run's toy columns measure the same experiments."""
    from pnp.toy.quality import recoloured, reshaped, sources

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = ["# The toy benchmark: toy-world scenes and captions, made by scripts/make_evaluation_samples.py."]
    for k, rendered in enumerate(sources(cases)):
        scene = rendered.scene
        name = f"{k:02d}-{scene.shapes[0].colour}-{scene.shapes[0].kind}.png"
        rendered.image.save(images / name, optimize=True)
        lines += [f"- init_img: images/{name}", f"  source_prompt: {scene.caption}", "  target_prompts:"]
        lines += [f"    - {change(scene, k).caption}" for change in (recoloured, reshaped)]
    (folder / "toy.yaml").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "samples")
    args = parser.parse_args(argv)
    write_ti2i(args.out / "ti2i")
    write_pie_bench(args.out / "pie-bench")
    write_toy(args.out / "toy")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
