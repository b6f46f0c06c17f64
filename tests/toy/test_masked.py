"""Masked editing on the toy model: 32 rendered two-shape scenes, one shape recoloured inside its own mask.

The figures are ``pnp.toy.masked``'s, as ``python -m benchmarks.toy_masks`` prints them for more
modes, here for two: no mask, and latent blending to the end with the pixel paste (1-pixel
feather, whose edge stays inside the mask: the background outside it is the photo's; a 2-pixel
feather measured 34.9 dB there, the default 8-pixel one about 32 dB, docs/masks.md). Each bound
below is a named constant with the value it was measured at (committed toy model, 10 steps,
guidance 7.5, one torch thread), a little past it so that another CPU's last bits cannot flip it,
and the issue's goal where the model cannot reach it. To measure
them again (after retraining the toy model, say):

    python -m pytest -q -s tests/toy/test_masked.py   # prints both modes' figures
"""

import pytest

from pnp import PnPPipeline
from pnp.toy import masked

CASES = 32
PASTE = dict(mask_paste=True, mask_feather=1)

# (a) The other shape keeps its colour and mask: the goal with the paste, 99%; measured 100%.
KEPT_WITH_PASTE = 0.99
# Without a mask the edit reaches the other shape too: measured 0%.
KEPT_WITHOUT_MASK_AT_MOST = 0.25
# (b) Background PSNR outside the mask, mean over the scenes: the goal with the paste, 35 dB;
# measured 100 dB (the cap: exact). Without a mask: measured 18.40 dB.
PSNR_WITH_PASTE = 35.0
PSNR_WITHOUT_MASK_AT_MOST = 25.0
# (c) The edited shape takes the target colour: the goal is 90%, which the toy model does not reach
# with or without a mask (docs/toy.md): measured 43.8% with the paste, 40.6% without a mask.
EDITED_WITH_PASTE = 0.35


@pytest.fixture(scope="module")
def measured():
    """Both modes' figures on the same scenes, printed for whoever measures them again."""
    pipe = PnPPipeline.from_pretrained("toy", device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    cases = [masked.edit_case(k) for k in range(CASES)]
    figures = {
        "no mask": masked.figures(cases, masked.translate(pipe, cases, masked=False)),
        "paste": masked.figures(cases, masked.translate(pipe, cases, masked=True, **PASTE)),
    }
    for name, measured in figures.items():
        print(f"{name}: {measured}")
    return figures


def test_the_shape_outside_the_mask_keeps_its_colour_and_mask(measured):
    with_paste, without = measured["paste"], measured["no mask"]
    assert with_paste.kept_rate >= KEPT_WITH_PASTE, with_paste
    assert without.kept_rate <= KEPT_WITHOUT_MASK_AT_MOST, without


def test_the_background_outside_the_mask_keeps_the_sources_pixels(measured):
    with_paste, without = measured["paste"], measured["no mask"]
    assert with_paste.mean_psnr >= PSNR_WITH_PASTE, with_paste
    assert without.mean_psnr <= PSNR_WITHOUT_MASK_AT_MOST, without


def test_the_shape_inside_the_mask_still_takes_the_target_colour(measured):
    assert measured["paste"].edited_rate >= EDITED_WITH_PASTE, measured["paste"]
