"""Pixels to latents and back: the conversions and the VAE scaling rule."""

import numpy as np
import torch
from PIL import Image

from pnp.method.vae import decode, encode, image_to_tensor
from support.reference import tensor_to_images


def test_tensor_round_trip_and_output_formula():
    image = Image.fromarray(np.array([[[0, 128, 255]]], dtype=np.uint8))
    tensor = image_to_tensor(image)
    assert tensor.shape == (1, 3, 1, 1)
    assert torch.allclose(tensor.flatten(), torch.tensor([-1.0, 128 / 127.5 - 1, 1.0]), atol=1e-6)
    decoded = torch.tensor([-1.5, 0.0, 0.5, 2.0]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)
    pixels = np.asarray(tensor_to_images(decoded)[0])[:, :, 0]
    # clamp(x / 2 + 0.5, 0, 1) * 255, rounded: -1.5 -> 0, 0 -> 127.5 -> 128, 0.5 -> 191.25 -> 191, 2 -> 255
    assert pixels.tolist() == [[0, 128], [191, 255]]


# The tiny random VAE's latents are small (posterior mean rms 0.24; times the scaling factor,
# 0.044), so an error relative to each element means little near zero, and a fixed absolute
# tolerance would be loose for latents and tight for pixels. Each comparison below is absolute,
# bounded by 1e-5 of the rms of the expected tensor: float32 rounding of a few operations. The
# code under test runs the very operations of the direct calls and matched them bit for bit.
def _tolerance(expected: torch.Tensor) -> float:
    return 1e-5 * float(expected.pow(2).mean().sqrt())


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_encode_is_the_posterior_mean_times_the_scaling_factor(pipe):
    vae = pipe.vae
    factor = vae.config.scaling_factor
    assert abs(factor - 1) > 0.5  # 0.18215: dropping or inverting it changes the latents 5 to 30 times
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        mean = vae.encode(pixels).latent_dist.mean
        latents = encode(vae, pixels)
    expected = mean * factor
    atol = _tolerance(expected)
    torch.testing.assert_close(latents, expected, rtol=0, atol=atol)
    # The factor dropped moves the latents by up to 0.49, inverted by 3.2: beyond 10^5 tolerances.
    assert _max_diff(mean, expected) > 1e4 * atol
    assert _max_diff(mean / factor, expected) > 1e4 * atol


def test_decode_divides_by_the_scaling_factor(pipe):
    vae = pipe.vae
    factor = vae.config.scaling_factor
    # rms 1, the size of a real Stable Diffusion model's scaled latents.
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = vae.decode(latents / factor).sample
        decoded = decode(vae, latents)
        undivided, multiplied = vae.decode(latents).sample, vae.decode(latents * factor).sample
    atol = _tolerance(expected)
    torch.testing.assert_close(decoded, expected, rtol=0, atol=atol)
    # The division dropped moves the pixels (rms 0.5) by up to 3.6, a multiplication instead by 4.5.
    assert _max_diff(undivided, expected) > 1e4 * atol
    assert _max_diff(multiplied, expected) > 1e4 * atol
