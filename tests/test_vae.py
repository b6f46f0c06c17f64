"""Pixels to latents and back: the conversions and the VAE scaling rule."""

import numpy as np
import torch
from PIL import Image

from pnp.vae import image_to_tensor, tensor_to_images


def test_tensor_round_trip_and_output_formula():
    image = Image.fromarray(np.array([[[0, 128, 255]]], dtype=np.uint8))
    tensor = image_to_tensor(image)
    assert tensor.shape == (1, 3, 1, 1)
    assert torch.allclose(tensor.flatten(), torch.tensor([-1.0, 128 / 127.5 - 1, 1.0]), atol=1e-6)
    decoded = torch.tensor([-1.5, 0.0, 0.5, 2.0]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)
    pixels = np.asarray(tensor_to_images(decoded)[0])[:, :, 0]
    # clamp(x / 2 + 0.5, 0, 1) * 255, rounded: -1.5 -> 0, 0 -> 127.5 -> 128, 0.5 -> 191.25 -> 191, 2 -> 255
    assert pixels.tolist() == [[0, 128], [191, 255]]

