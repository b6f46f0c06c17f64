"""The mask rule: pixels to latent resolution (area, threshold, dilation), the blend, and the paste's feathered weight.

Expected values are counted by hand from the rule's description in pnp/method/mask.py.
"""

import torch

from pnp.method.mask import MASK_THRESHOLD, EditMask, blend, latent_mask, paste, paste_alpha


def test_a_latent_pixel_is_in_the_mask_when_half_of_its_pixels_are_white():
    white = torch.zeros(16, 24, dtype=torch.bool)
    white[0:8, 0:4] = True  # 32 of block (0, 0)'s 64 pixels: half, in
    white[0:8, 8:11] = True  # 24 of block (0, 1)'s: out
    white[0:8, 16:24] = True  # all of block (0, 2): in
    white[8:16, 0:8] = True  # all of block (1, 0)
    white[15, 8:16] = True  # one row of block (1, 1): out
    assert MASK_THRESHOLD == 0.5
    expected = torch.tensor([[True, False, True], [True, False, False]])
    assert torch.equal(latent_mask(white, (2, 3))[0, 0], expected)


def test_the_mask_is_taken_from_its_own_size_by_area():
    # A 32x48 mask for a 2x3 latent grid: each latent pixel covers 16x16 mask pixels.
    white = torch.zeros(32, 48, dtype=torch.bool)
    white[0:16, 16:24] = True  # half of latent pixel (0, 1)
    white[16:32, 32:39] = True  # 7/16 of latent pixel (1, 2)
    expected = torch.tensor([[False, True, False], [False, False, False]])
    assert torch.equal(latent_mask(white, (2, 3))[0, 0], expected)


def test_dilation_grows_the_latent_mask_by_whole_latent_pixels_in_a_square():
    white = torch.zeros(56, 56, dtype=torch.bool)
    white[24:32, 24:32] = True  # latent pixel (3, 3) of 7x7
    grown = latent_mask(white, (7, 7), dilation=2)[0, 0]
    expected = torch.zeros(7, 7, dtype=torch.bool)
    expected[1:6, 1:6] = True
    assert torch.equal(grown, expected)


def test_blend_takes_the_targets_inside_and_the_sources_outside_bit_for_bit():
    x, source = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    mask = torch.zeros(2, 1, 3, 3, dtype=torch.bool)
    mask[0, 0, 1, 1] = True
    blended = blend(x, source, mask)
    assert torch.equal(blended[0, :, 1, 1], x[0, :, 1, 1])
    assert torch.equal(blended[0, :, 0], source[0, :, 0]) and torch.equal(blended[1], source[1])


def test_the_paste_weight_is_one_on_the_mask_and_ramps_to_zero_within_the_feather():
    mask = (torch.arange(24) < 8).expand(8, 24)[None, None]  # columns 0-7 of 24
    alpha = paste_alpha(mask, feather=4)[0, 0]
    # The mask grown by 2 pixels (columns 0-9), averaged over 5 columns: 4/5, 3/5, 2/5, 1/5 past the edge.
    row = torch.tensor([1.0] * 8 + [0.8, 0.6, 0.4, 0.2] + [0.0] * 12)
    torch.testing.assert_close(alpha, row.expand(8, 24))
    assert torch.equal(paste_alpha(mask, feather=0)[0, 0], mask[0, 0].float())


def test_the_paste_keeps_the_source_exactly_where_the_weight_is_zero():
    decoded, source = torch.randn(1, 3, 8, 24), torch.randn(1, 3, 8, 24)
    alpha = paste_alpha((torch.arange(24) < 8).expand(8, 24)[None, None], feather=4)
    pasted = paste(decoded, source, alpha)
    assert torch.equal(pasted[..., 12:], source[..., 12:]) and torch.equal(pasted[..., :8], decoded[..., :8])


def test_an_edit_mask_is_the_rule_at_the_latent_grid_and_at_the_working_size():
    white = torch.zeros(64, 80, dtype=torch.bool)  # a mask at half the working size, 160x128
    white[10:30, 20:43] = True
    mask = EditMask.of(white, (160, 128), scale=8, dilation=1)
    pixels = torch.zeros(128, 160, dtype=torch.bool)
    pixels[20:60, 40:86] = True  # each mask pixel covers 2x2 working pixels
    assert torch.equal(mask.pixels[0, 0], pixels)
    latent = torch.zeros(16, 20, dtype=torch.bool)
    # A latent pixel covers 4x4 mask pixels: rows 10-29 cover latent rows 2-7 (2 and 7: half), columns 20-42 latent
    # columns 5-10 (10: 3 of 4), so the corners (2, 10) and (7, 10) hold 2 x 3 of 16 white pixels, out; grown by one.
    latent[1:9, 4:11] = True
    latent[2:8, 11] = True
    assert torch.equal(mask.latent[0, 0], latent)
