"""Calling the UNet: dtype handling and the record of every call's batch size."""

from __future__ import annotations

import torch


class NoisePredictor:
    """Wraps a diffusers UNet2DConditionModel; latents and noise predictions stay float32.

    Keeping the DDIM arithmetic in float32 matters for inversion under float16/bfloat16 weights.
    ``batch_sizes`` lists the rows of every call, in order, so a run can be accounted for.
    """

    def __init__(self, unet) -> None:
        self.unet = unet
        self.batch_sizes: list[int] = []

    @property
    def rows(self) -> int:
        return sum(self.batch_sizes)

    @property
    def calls(self) -> int:
        return len(self.batch_sizes)

    def __call__(self, latents: torch.Tensor, t: int, embeddings: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(latents.shape[0])
        # The timestep as a tensor: a compiled UNet would recompile for every new Python number.
        timestep = torch.tensor(t, device=latents.device)
        eps = self.unet(latents.to(self.unet.dtype), timestep, encoder_hidden_states=embeddings).sample
        return eps.float()
