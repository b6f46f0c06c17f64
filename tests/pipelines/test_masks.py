"""Masked editing through the pipeline: exactness outside the mask, the paste, the row plan, the cache, bad masks.

The image and its masks are made at the working size (192x128 at resolution 128) with edges on the
8-pixel latent grid, so which latent pixels are in the mask is known without the rule under test.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from pnp.config import ConfigError
from pnp.method.vae import encode, image_to_tensor
from support.models import load_tiny

STEPS = 4
FAST = dict(num_inference_steps=STEPS, resolution=128)
PROMPTS = ["a cat", "a dog"]
# The white rectangle of the mask, in pixels (rows, columns), and in latent pixels.
ROWS, COLUMNS = slice(32, 96), slice(64, 128)
LATENT_ROWS, LATENT_COLUMNS = slice(4, 12), slice(8, 16)


@pytest.fixture
def picture(photo):
    return photo.resize((192, 128))


def rectangle_mask(rows=ROWS, columns=COLUMNS, size=(128, 192)) -> Image.Image:
    pixels = np.zeros(size, np.uint8)
    pixels[rows, columns] = 255
    return Image.fromarray(pixels, "L")


def inside_latent():
    inside = torch.zeros(16, 24, dtype=torch.bool)
    inside[LATENT_ROWS, LATENT_COLUMNS] = True
    return inside


class Recorder:
    """The step callback's latents: the inversion's by timestep, the translation's by step."""

    def __init__(self):
        self.inversion, self.translation = {}, []

    def __call__(self, pipe, step, timestep, tensors):
        latents = tensors["latents"].clone()
        if pipe.phase == "inversion":
            self.inversion[timestep] = latents
        else:
            self.translation.append(latents)


def translate(pipe, picture, **settings):
    recorder = Recorder()
    result = pipe(prompt=PROMPTS, image=picture, callback_on_step_end=recorder, **FAST, **settings)
    return result, recorder


def test_outside_the_mask_every_target_latent_is_the_sources_at_the_same_timestep(pipe, picture):
    result, seen = translate(pipe, picture, mask_image=rectangle_mask(), output_type="latent")
    timesteps = sorted(seen.inversion, reverse=True)  # the sampling timesteps, noisiest first
    clean = encode(pipe.vae, image_to_tensor(picture))  # the latent the inversion started from
    # After step i the targets are at the next timestep (the clean end after the last step).
    sources = [seen.inversion[t] for t in timesteps[1:]] + [clean]
    outside = ~inside_latent()
    assert len(seen.translation) == STEPS
    for step, (x, source) in enumerate(zip(seen.translation, sources)):
        for target in x:
            assert torch.equal(target[:, outside], source[0][:, outside]), f"step {step}"
            assert (target[:, ~outside] != source[0][:, ~outside]).float().mean() > 0.9, f"step {step}"
    assert torch.equal(result.images, seen.translation[-1])


def test_blending_stops_after_the_chosen_fraction_of_the_steps(pipe, picture):
    _, seen = translate(pipe, picture, mask_image=rectangle_mask(), mask_blend_threshold=0.5, output_type="latent")
    timesteps = sorted(seen.inversion, reverse=True)
    outside = ~inside_latent()
    for step, x in enumerate(seen.translation[:-1]):
        same = torch.equal(x[:, :, outside], seen.inversion[timesteps[step + 1]].expand_as(x)[:, :, outside])
        assert same == (step < STEPS // 2), f"step {step}"


def test_the_paste_gives_the_source_pixels_outside_the_feathered_region(pipe, picture):
    result, _ = translate(pipe, picture, mask_image=rectangle_mask(), mask_paste=True, mask_feather=6)
    source = np.asarray(picture)
    # The region that may differ: the mask grown by the feather's 6 pixels (its square neighbourhood).
    near = np.zeros((128, 192), bool)
    near[ROWS.start - 6 : ROWS.stop + 6, COLUMNS.start - 6 : COLUMNS.stop + 6] = True
    for image in result.images:
        pixels = np.asarray(image)
        assert np.array_equal(pixels[~near], source[~near])
        assert (pixels[ROWS, COLUMNS] != source[ROWS, COLUMNS]).any(axis=-1).mean() > 0.5
    # Without the paste the background is the source's latents decoded: close, but not the pixels.
    unpasted, _ = translate(pipe, picture, mask_image=rectangle_mask())
    assert not np.array_equal(np.asarray(unpasted.images[0])[~near], source[~near])


def test_a_mask_that_covers_every_latent_pixel_gives_exactly_the_unmasked_result(pipe, picture):
    """An all-white mask is refused (below); the same latent mask, from a mask black at one pixel, is the mask of
    the whole image, and changes nothing: not the latents, not the pixels with the paste."""
    almost_white = np.full((128, 192), 255, np.uint8)
    almost_white[50, 50] = 0
    mask = Image.fromarray(almost_white, "L")
    plain, _ = translate(pipe, picture, output_type="latent")
    masked, _ = translate(pipe, picture, mask_image=mask, output_type="latent")
    assert torch.equal(masked.images, plain.images)
    plain_pixels, _ = translate(pipe, picture, output_type="np")
    pasted, _ = translate(pipe, picture, mask_image=mask, mask_paste=True, output_type="np")
    assert np.array_equal(pasted.images, plain_pixels.images)


def count_rows(pipe, **settings):
    rows = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        result = pipe(prompt=PROMPTS, output_type="latent", **FAST, **settings)
    finally:
        handle.remove()
    return rows, result.metrics


def test_the_mask_costs_no_unet_rows(pipe, picture):
    plain_rows, plain = count_rows(pipe, image=picture)
    masked_rows, masked = count_rows(pipe, image=picture, mask_image=rectangle_mask(), mask_dilation=1)
    assert masked_rows == plain_rows
    assert (masked["unet_calls"], masked["unet_rows"]) == (plain["unet_calls"], plain["unet_rows"])


# Images of one working size share their UNet calls, which changes the order of float32 sums in the UNet:
# within tests/method/test_engine.py's BATCH_TOLERANCE (5e-4) of single runs; masking the wrong image moves
# latents by about 1.
BATCH_TOLERANCE = dict(rtol=0, atol=5e-4)


def test_masks_per_image_in_a_list(pipe, picture, photo):
    """One mask per image; None leaves its image unmasked (both images share their UNet calls)."""
    both, _ = translate(pipe, [picture, photo], mask_image=[rectangle_mask(), None], output_type="latent")
    single, _ = translate(pipe, picture, mask_image=rectangle_mask(), output_type="latent")
    plain, _ = translate(pipe, photo, output_type="latent")
    torch.testing.assert_close(both.images, torch.cat([single.images, plain.images]), **BATCH_TOLERANCE)


def test_arrays_tensors_and_drawings_on_a_transparent_layer_mark_the_same_region(pipe, picture):
    white = np.asarray(rectangle_mask()) > 0
    drawing = np.zeros((128, 192, 4), np.uint8)
    drawing[white] = (255, 255, 255, 255)  # a white stroke on a transparent layer
    expected = translate(pipe, picture, mask_image=rectangle_mask(), output_type="latent")[0].images
    for mask in (white, white.astype(np.float32), torch.from_numpy(white)[None], Image.fromarray(drawing, "RGBA")):
        got = translate(pipe, picture, mask_image=mask, output_type="latent")[0].images
        assert torch.equal(got, expected), type(mask)


def test_a_mask_of_the_images_aspect_but_another_size_is_scaled(pipe, picture):
    half = rectangle_mask(slice(16, 48), slice(32, 64), (64, 96))
    expected = translate(pipe, picture, mask_image=rectangle_mask(), output_type="latent")[0].images
    assert torch.equal(translate(pipe, picture, mask_image=half, output_type="latent")[0].images, expected)


def test_the_source_cache_serves_masked_calls_unchanged(tiny_model_dir, picture):
    cached = load_tiny(tiny_model_dir, source_cache=True)
    cold = cached(prompt=PROMPTS, image=picture, mask_image=rectangle_mask(), output_type="latent", **FAST)
    plain = cached(prompt=PROMPTS, image=picture, output_type="latent", **FAST)
    warm = cached(prompt=PROMPTS, image=picture, mask_image=rectangle_mask(), output_type="latent", **FAST)
    assert (plain.metrics["cache_hits"], warm.metrics["cache_hits"]) == (1, 1)
    assert torch.equal(warm.images, cold.images)


def black(size=(128, 192)):
    return Image.fromarray(np.zeros(size, np.uint8), "L")


BAD_MASKS = [
    (
        dict(mask_image=rectangle_mask(size=(128, 128))),
        "mask_image",
        "is 128x128 pixels but its image is 192x128: another",
    ),
    (dict(mask_image=black()), "mask_image", "all black: it allows no change anywhere"),
    (dict(mask_image=Image.new("L", (192, 128), 255)), "mask_image", "all white: every pixel may change, which is"),
    (dict(mask_image=rectangle_mask(slice(0, 2), slice(0, 2))), "mask_image", "covers no 8x8 block"),
    (dict(mask_image="mask.png"), "mask_image", "expected PIL images, numpy arrays or torch tensors, got str"),
    (dict(mask_image=[rectangle_mask()] * 2), "mask_image", "one mask per image: 1 image, 2 masks"),
    (dict(mask_image=np.zeros((128, 192, 2))), "mask_image", r"an array mask must be \(H, W\)"),
    (dict(mask_image=np.full((128, 192), 2.0)), "mask_image", r"finite numbers in \[0, 1\]"),
    (dict(mask_image=rectangle_mask(), mask_paste=True, output_type="latent"), "mask_paste", "not output_type"),
    (dict(mask_image=rectangle_mask(), mask_dilation=9), "mask_dilation", "9 is out of range, use a value from 0"),
    (dict(mask_image=rectangle_mask(), mask_paste=1), "mask_paste", "expected True or False, got 1"),
    (dict(mask_image=rectangle_mask(), mask_blend_threshold=1.5), "mask_blend_threshold", "out of range"),
]


@pytest.mark.parametrize("settings, param, message", BAD_MASKS)
def test_bad_masks_are_refused_before_any_unet_call(pipe, picture, settings, param, message):
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(ConfigError, match=message) as caught:
            pipe(prompt="a cat", image=picture, **FAST, **settings)
    finally:
        handle.remove()
    assert caught.value.param == param and calls == []


def test_a_mask_with_a_generated_source_is_refused(pipe):
    with pytest.raises(ConfigError, match="a generated source is not known before the call") as caught:
        pipe(prompt="a cat", generation_prompt="a dog", mask_image=rectangle_mask(), **FAST)
    assert caught.value.param == "mask_image"


def test_a_mask_of_the_photo_fits_the_photo_read_at_its_working_size(pipe, photo):
    """The entry points read images at their working size (160x128 -> 192x128), masks at their own."""
    from pnp.images import resize_for_model

    mask = rectangle_mask(ROWS, slice(50, 110), (128, 160))
    given = pipe(prompt="a cat", image=photo, mask_image=mask, output_type="latent", **FAST).images
    read = pipe(prompt="a cat", image=resize_for_model(photo, 128), mask_image=mask, output_type="latent", **FAST)
    assert torch.equal(read.images, given)


def test_sdxl_blends_like_stable_diffusion(tiny_sdxl_model_dir, picture):
    """SDXL's VAE runs in float32 where it overflows in float16; blending and the grid are the same."""
    xl = load_tiny(tiny_sdxl_model_dir)
    assert xl.vae_scale_factor == 8
    result = xl(prompt="a cat", image=picture, mask_image=rectangle_mask(), output_type="latent", **FAST)
    clean = encode(xl.vae, image_to_tensor(picture), float32=True)
    inside = inside_latent()
    assert torch.equal(result.images[0][:, ~inside], clean[0][:, ~inside])
    assert (result.images[0][:, inside] != clean[0][:, inside]).float().mean() > 0.9
