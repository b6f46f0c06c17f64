"""A source's trajectory: its latents at every sampling timestep, inverted from an image or generated."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pnp.method.text import TextEmbeddings


@dataclass
class Trajectory:
    """The source's noisy latents at every sampling timestep, and the prompt embedding it was made with."""

    latents: dict[int, torch.Tensor]  # timestep -> (1, 4, h, w) float32
    embedding: TextEmbeddings  # one row: the empty prompt for real images, the generation prompt otherwise
