"""The source trajectory of a real image: VAE encoding and DDIM inversion, all in memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from tqdm.auto import tqdm

from .ddim import DDIMSchedule, ddim_step
from .images import image_to_tensor
from .unet import NoisePredictor


@dataclass
class Trajectory:
    """The source's noisy latents at every sampling timestep, and the prompt embedding it was made with."""

    latents: dict[int, torch.Tensor]  # timestep -> (1, 4, h, w) float32
    embedding: torch.Tensor  # (1, 77, D): the empty prompt for real images, the generation prompt otherwise
    image: Image.Image | None = None  # the generated source image, in generation mode


def encode_image(vae, image: Image.Image) -> torch.Tensor:
    """Latent of an RGB image: the VAE posterior mean times the scaling factor (no sampling noise)."""
    pixels = image_to_tensor(image).to(vae.device, vae.dtype)
    return vae.encode(pixels).latent_dist.mean.float() * vae.config.scaling_factor


def invert(
    predict: NoisePredictor,
    schedule: DDIMSchedule,
    latent: torch.Tensor,
    embedding: torch.Tensor,
    needed: list[int],
    inversion_steps: int,
    progress: bool = False,
) -> dict[int, torch.Tensor]:
    """DDIM-invert ``latent`` with ``inversion_steps`` steps, keeping it at each timestep in ``needed``.

    Step i evaluates the UNet at t_i on the latent at t_{i-1} (Song et al. 2021, Sec. 4.3); the
    inversion stops at the noisiest needed timestep, since nothing later is used.
    """
    path = schedule.inversion_timesteps(inversion_steps, up_to=max(needed))
    missing = set(needed) - set(path)
    if missing:
        raise ValueError(f"inversion_steps: {inversion_steps} steps never reach timesteps {sorted(missing)[:5]}")
    kept, previous, z = {}, None, latent
    for t in tqdm(path, desc="inversion", disable=not progress):
        eps = predict(z, t, embedding)
        z = ddim_step(z, eps, schedule.alpha_bar(previous), schedule.alpha_bar(t))
        if t in needed:
            kept[t] = z
        previous = t
    return kept
