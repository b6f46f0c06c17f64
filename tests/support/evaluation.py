"""``pnp evaluate`` in this process on given models, as the evaluation tests run it; where a masked run may differ."""

import json

import numpy as np
from PIL import Image, ImageFilter

from pnp.app.cli import main
from pnp.evaluation.piebench import editing_mask

# PIE-Bench's sample images are 512 px square; the tests translate them at 128.
PIE_SIDE, WORKING_SIDE = 512, 128


def run_evaluate(benchmark, out, model, clip_model, dino_model, *extra) -> int:
    """``pnp evaluate BENCHMARK --out OUT`` with these translation and metric models; ``extra``: more flags."""
    models = ["--model", str(model), "--clip-model", str(clip_model), "--dino-model", str(dino_model)]
    return main(["evaluate", str(benchmark), "--out", str(out), *models, *extra])


def near_pie_mask(pie_folder, key: str) -> np.ndarray:
    """(128, 128) bool: where a PIE-Bench sample's output at its 128 px working size may differ from its source in a
    ``--use-masks`` run: its edited region, grown by a latent pixel (8 px), within which the latent grid decides."""
    entry = json.loads((pie_folder / "mapping_file.json").read_text())[key]
    region = editing_mask(entry["mask"], PIE_SIDE, PIE_SIDE).resize((WORKING_SIDE, WORKING_SIDE), Image.Resampling.BOX)
    return np.asarray(region.point(lambda v: 255 * (v > 0)).filter(ImageFilter.MaxFilter(17))) > 0
