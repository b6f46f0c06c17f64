"""The metrics against hand-worked cases, on tiny random CLIP and DINO-ViT models built from the transformers
classes."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from pnp.evaluation.background import background_scores
from pnp.evaluation.clip import ClipSimilarity, clip_score, masked
from pnp.evaluation.metric_models import MetricUnavailable, load_clip, load_dino, load_lpips
from pnp.evaluation.structure import StructureDistance, preprocess, resized_size
from pnp.pipelines.loading import ModelError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def gray(value, size=(64, 64)):
    return Image.new("RGB", size, (value, value, value))


def pattern(seed, size=(96, 64)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


# --- background preservation (PIE-Bench) ---


def test_a_known_background_perturbation_has_a_known_psnr_and_mse():
    source = np.full((64, 64, 3), 100, dtype=np.uint8)
    output = source.copy()
    output[:, 32:] += 10  # the background (right half) is 10 levels brighter
    output[:, :32] = np.random.default_rng(0).integers(0, 256, (64, 32, 3))  # the edited half is anything
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[:, :32] = 1
    scores = background_scores(Image.fromarray(source), Image.fromarray(output), mask)
    # Hand-worked: both images are zeroed on the edited half; the other half differs by 10/255 everywhere.
    mse = (10 / 255) ** 2 * 0.5
    assert scores["mse"] == pytest.approx(mse, rel=1e-5)  # float32 arithmetic on 12288 values
    assert scores["psnr"] == pytest.approx(10 * math.log10(1 / mse), abs=1e-4)  # 31.14 dB
    assert scores["lpips"] is None  # no LPIPS model given


def test_ssim_of_two_flat_images_is_the_luminance_term():
    a, b = 128 / 255, 64 / 255
    scores = background_scores(gray(128), gray(64), np.zeros((64, 64), dtype=np.float32))
    c1 = (0.01 * 1.0) ** 2  # k1 = 0.01, data range 1
    # Flat images have no variance: the contrast-structure term is C2 / C2 = 1 in every window.
    assert scores["ssim"] == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-5)
    # Identical images: 1, up to float32 variances (E[x^2] - mu^2 leaves ~1e-8 against C2 = 9e-4).
    assert background_scores(gray(90), gray(90), np.zeros((64, 64), dtype=np.float32))["ssim"] == pytest.approx(
        1.0, abs=1e-4
    )


def test_without_background_every_score_is_nan():
    scores = background_scores(gray(10), gray(200), np.ones((64, 64), dtype=np.float32))
    assert all(math.isnan(value) for value in scores.values())


class FakeLpips:
    """Records what LPIPS is given; returns the mean absolute difference."""

    device = torch.device("cpu")

    def __init__(self):
        self.calls, self.resets = [], 0

    def __call__(self, a, b):
        self.calls.append((a.clone(), b.clone()))
        return (a - b).abs().mean()

    def reset(self):
        self.resets += 1


def test_lpips_gets_both_masked_images_in_minus_one_to_one():
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[:8] = 1
    lpips = FakeLpips()
    scores = background_scores(gray(255), gray(0), mask, lpips)
    [(a, b)] = lpips.calls
    # Outside the mask: white is 1 and black -1; inside, both are zeroed (0 -> -1), as PIE-Bench feeds it.
    assert a[0, :, 8:].eq(1).all() and b[0, :, 8:].eq(-1).all()
    assert a[0, :, :8].eq(-1).all() and b[0, :, :8].eq(-1).all()
    assert scores["lpips"] == pytest.approx(2 * 56 / 64)  # |1 - (-1)| on 56 of 64 rows
    assert lpips.resets == 1


def test_lpips_loads_or_says_why_not():
    try:
        metric = load_lpips("cpu")
    except MetricUnavailable as err:
        assert "torchvision" in str(err) and "SqueezeNet" in str(err)
    else:
        same = torch.zeros(1, 3, 64, 64)
        assert metric(same, same).item() == pytest.approx(0.0, abs=1e-6)


# --- structure distance (Splice / PIE-Bench) ---


@pytest.mark.parametrize(
    "height, width, expected",
    [
        (512, 512, (224, 224)),
        (300, 600, (224, 448)),
        (600, 300, (448, 224)),
        (200, 1000, (96, 480)),  # long side 1120 > 480: short = int(480 * 224 / 1120)
    ],
)
def test_images_are_resized_to_224_on_the_short_side_and_at_most_480(height, width, expected):
    assert resized_size(height, width) == expected


@pytest.mark.parametrize("variant, full_scale", [("splice", 1.0), ("pie-bench", 255.0)])
def test_both_input_scales_are_imagenet_normalised(variant, full_scale):
    tensor = preprocess(Image.new("RGB", (300, 200), (51, 102, 204)), variant)
    assert tuple(tensor.shape) == (1, 3, 224, 336)
    value = np.array([51, 102, 204]) / 255 * full_scale
    expected = (value - IMAGENET_MEAN) / IMAGENET_STD
    for channel in range(3):  # a flat image stays flat through the resize; float32 rounding
        np.testing.assert_allclose(tensor[0, channel].numpy(), expected[channel], rtol=1e-5)


def test_the_resize_is_bilinear_without_antialiasing():
    """Halving a side, bilinear interpolation without antialiasing (align_corners=False) samples halfway between
    each pair of pixels: the mean of each 2x2 block. Antialiasing, bicubic or nearest weigh other pixels."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(448, 448, 3), dtype=np.uint8)
    tensor = preprocess(Image.fromarray(pixels), "splice")
    blocks = pixels.astype(np.float64).reshape(224, 2, 224, 2, 3).mean(axis=(1, 3)) / 255
    expected = (blocks - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(tensor[0].permute(1, 2, 0).numpy(), expected, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def dino(dino_model_dir):
    return load_dino(str(dino_model_dir), "cpu")


def test_an_image_has_structure_distance_zero_to_itself(dino):
    metric = StructureDistance(dino)
    image = pattern(1)
    assert metric.distance(image, image.copy(), "splice") == 0.0
    assert metric.distance(image, image.copy(), "pie-bench") == 0.0
    assert metric.distance(image, pattern(2), "splice") > 0


def test_structure_distance_is_the_mse_of_last_block_key_self_similarities(dino):
    def self_similarity(image):
        # Independently of the hook: the last block's input, its pre-attention norm, then its key projection.
        with torch.no_grad():
            hidden = dino(
                pixel_values=preprocess(image, "splice"), interpolate_pos_encoding=True, output_hidden_states=True
            ).hidden_states[-2]
            block = dino.layers[-1]
            keys = block.attention.k_proj(block.layernorm_before(hidden))[0].numpy().astype(np.float64)
        keys /= np.linalg.norm(keys, axis=1, keepdims=True)
        return keys @ keys.T

    a, b = pattern(3), pattern(4)
    expected_a = self_similarity(a)
    assert expected_a.shape == (1 + (224 // 8) * (336 // 8),) * 2  # CLS and every 8x8 patch
    metric = StructureDistance(dino)
    np.testing.assert_allclose(metric.self_similarity(a, "splice").numpy(), expected_a, atol=1e-5)  # float32 vs float64
    expected = np.mean((expected_a - self_similarity(b)) ** 2)
    assert metric.distance(a, b, "splice") == pytest.approx(expected, rel=1e-4)


# --- CLIP ---


@pytest.fixture(scope="module")
def clip(clip_model_dir):
    return load_clip(str(clip_model_dir), "cpu")


def test_the_clip_cosine_is_that_of_the_projected_embeddings(clip, clip_model_dir):
    model, processor = CLIPModel.from_pretrained(clip_model_dir), CLIPProcessor.from_pretrained(clip_model_dir)
    images, texts = [pattern(5), pattern(6)], ["a photo of a cat", "an oil painting of the sea"]
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        image_embeds = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        tokens = processor.tokenizer(texts, padding=True, return_tensors="pt")
        text_embeds = model.text_projection(model.text_model(**tokens).pooler_output)
    image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    expected = (image_embeds * text_embeds).sum(-1).tolist()
    assert ClipSimilarity(*clip).cosines(images, texts) == pytest.approx(expected, abs=1e-6)  # float32 rounding


def test_pie_bench_clip_score_is_100_times_the_positive_cosine():
    assert clip_score(0.2541) == pytest.approx(25.41)
    assert clip_score(-0.3) == 0.0


def test_the_edited_region_is_the_image_times_the_mask():
    mask = np.zeros((64, 96), dtype=np.float32)
    mask[10:20, 30:40] = 1
    image = pattern(7)
    result = np.asarray(masked(image, mask))
    assert (result[10:20, 30:40] == np.asarray(image)[10:20, 30:40]).all()
    assert result.sum() == np.asarray(image)[10:20, 30:40].astype(np.int64).sum()


# --- model loading ---


def test_an_uncached_hub_model_offline_says_how_to_provide_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as caught:
        load_clip("someone/clip-that-is-not-cached", "cpu")
    message = str(caught.value)
    assert message.startswith("--clip-model: ") and "hf download someone/clip-that-is-not-cached" in message
    assert "--clip-model tiny" in message
    with pytest.raises(ModelError, match="--dino-model: no model folder at ./no-such-folder"):
        load_dino("./no-such-folder", "cpu")
