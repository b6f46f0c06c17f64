"""The method's effect, measured on the toy model with the scorer: layout kept, appearance changed.

Every figure is over 32 rendered sources (``pnp.toy.quality``, fixed seeds) at the model's own
128 px, 10 inversion and 10 sampling steps, guidance 7.5, the settings of ``python -m benchmarks.toy``,
which prints the same figures (and the shape change and the trade-off curve).

Each test asserts what the committed model reaches, a little below the measured value so that
another CPU's last bits cannot flip it, and says the issue's goal beside it where the model falls
short (docs/toy.md). Measured (``python -m benchmarks.toy --cases 32 --no-figures --threads 1``):
text to image: colour 94%, shape 41%; reconstruction: IoU 0.696, colour 100%, class 81%; colour
change: colour 91%, class kept 59%, IoU 0.515; the same without injection: IoU 0.506.
"""

import numpy as np
import pytest

from pnp import PnPPipeline
from pnp.toy import quality

CASES = 32


@pytest.fixture(scope="module")
def toy():
    # The source cache stays on: every experiment below inverts the same 32 sources once.
    pipe = PnPPipeline.from_pretrained("toy", device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def measured(toy):
    """Each experiment once, on demand, shared by the tests that read it."""
    rendered = quality.sources(CASES)
    cache = {}

    def get(name: str) -> tuple[quality.Figures, list]:
        if name not in cache:
            change, settings = EXPERIMENTS[name]
            cache[name] = quality.translation_figures(toy, rendered, change, **settings)
        return cache[name]

    return get


EXPERIMENTS = {
    "reconstruction": (None, {}),
    "colour change": (quality.recoloured, {}),
    "colour change without injection": (quality.recoloured, quality.NO_INJECTION),
}


def test_text_to_image_draws_the_captions_colour(toy):
    figures = quality.text_to_image_figures(toy, quality.sources(CASES))
    assert figures.colour_rate >= 0.85, figures  # goal 90%; measured 94%
    # Chance is a third; the model's shapes are still blotchy.
    assert figures.shape_rate >= 0.3, figures  # goal 90%; measured 41%


def test_reconstruction_keeps_the_shape_where_it_was(measured):
    figures, _ = measured("reconstruction")
    assert figures.mean_iou >= 0.63, figures  # goal 0.9; measured 0.696
    assert figures.colour_rate >= 0.9 and figures.shape_rate >= 0.7, figures  # measured 100%, 81%


def test_a_colour_change_takes_the_new_colour_where_the_source_was(measured):
    figures, _ = measured("colour change")
    # Chance is 25% for the colour; the source's colour is never the target's.
    assert figures.colour_rate >= 0.85, figures  # goal 90%; measured 91%
    assert figures.mean_iou >= 0.46, figures  # goal 0.8; measured 0.515
    assert figures.shape_rate >= 0.5, figures  # measured 59%


def test_injection_changes_the_outputs_without_losing_layout(measured):
    """Both thresholds at 0 is plain DDIM inversion and sampling with the new prompt.

    The issue's goal is a mask IoU higher by 0.1 with injection; this model reaches 0.515 against
    0.506 (docs/toy.md: its layout comes from the inverted noise, not from the injected layers). What
    holds: the injection acts (the outputs differ) and costs no layout."""
    (injected, with_), (plain, without) = measured("colour change"), measured("colour change without injection")
    difference = np.mean([np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() for a, b in zip(with_, without)])
    assert difference > 2.0, difference  # mean 8-bit levels; an injection that writes nothing gives 0
    assert injected.mean_iou >= plain.mean_iou - 0.02, f"with injection {injected}; without {plain}"
