"""Between pixels and latents: the VAE's encoding and decoding rule, and the pixel conversions around it.

Latents are the VAE posterior mean times ``scaling_factor`` (no sampling noise, as pnp-diffusers
encodes), and decoding divides by it again. SDXL's VAE overflows in float16 (its config says
``force_upcast``): with ``float32`` it runs in float32 for the call and goes back to its dtype
after, as diffusers' SDXL pipelines run it.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> (1, 3, H, W) float32 in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def encode(vae, pixels: torch.Tensor, float32: bool = False) -> torch.Tensor:
    """(n, 3, H, W) pixels in [-1, 1] -> float32 latents: posterior mean times the scaling factor."""
    with _in_float32(vae, float32):
        posterior = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return posterior.mean.float() * vae.config.scaling_factor


def decode(vae, latents: torch.Tensor, float32: bool = False) -> torch.Tensor:
    """(n, 4, h, w) latents -> (n, 3, H, W) pixels in about [-1, 1]: the latents divided by the scaling factor,
    decoded."""
    with _in_float32(vae, float32):
        return vae.decode(latents.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample


def needs_float32(vae) -> bool:
    """Whether a VAE must run in float32: it is float16 and its config says it overflows there (SDXL's)."""
    return vae.dtype == torch.float16 and bool(vae.config.get("force_upcast", False))


@contextmanager
def _in_float32(vae, float32: bool):
    dtype = vae.dtype
    if not float32 or dtype == torch.float32:
        yield
        return
    vae.to(torch.float32)
    try:
        yield
    finally:
        vae.to(dtype)
