"""Calling the UNet: dtype handling, SDXL's added conditions, the conversion to noise, and the record of every call's
batch size."""

from __future__ import annotations

import torch

from pnp.method.ddim import DDIMSchedule
from pnp.method.prediction import noise_from_output
from pnp.method.text import TextEmbeddings


class NoisePredictor:
    """Wraps a diffusers UNet2DConditionModel; latents and noise predictions stay float32.

    Keeping the DDIM arithmetic in float32 matters for inversion under float16/bfloat16 weights.
    Whatever the UNet predicts (``schedule.prediction_type``; None: an epsilon model), the caller
    gets the noise (``pnp.method.prediction.noise_from_output``). An SDXL UNet (``addition_embed_type``
    "text_time") also gets each row's pooled text embedding and the time ids of the working
    size: original size = target size = the latents' size in pixels, no crop, as diffusers'
    SDXL pipelines use for an image of that size. ``batch_sizes`` lists the rows of every call,
    in order, so a run can be accounted for.
    """

    def __init__(self, unet, schedule: DDIMSchedule | None = None, vae_scale_factor: int = 8) -> None:
        self.unet = unet
        self.schedule = schedule
        self.vae_scale_factor = vae_scale_factor
        self.batch_sizes: list[int] = []

    @property
    def rows(self) -> int:
        return sum(self.batch_sizes)

    @property
    def calls(self) -> int:
        return len(self.batch_sizes)

    def __call__(self, latents: torch.Tensor, t: int, text: TextEmbeddings) -> torch.Tensor:
        """The noise the UNet sees in ``latents`` (rows, 4, h, w) at timestep t, each row conditioned on its row of
        ``text``.

        A v or sample prediction is converted at t's cumulative alpha, the noise level the UNet
        was told, also when DDIM inversion evaluates it at t on the latent of the step before: so
        the inversion is the one the same model would give in the epsilon parametrisation.
        (diffusers' DDIMInverseScheduler converts at the latent's own level instead; on Gaussian
        data with its exact predictor that doubles the round-trip error, see tests/method/test_inversion.py.)
        """
        self.batch_sizes.append(latents.shape[0])
        # The timestep as a tensor: a compiled UNet would recompile for every new Python number.
        timestep = torch.tensor(t, device=latents.device)
        dtype = self.unet.dtype
        output = self.unet(
            latents.to(dtype),
            timestep,
            encoder_hidden_states=text.hidden.to(dtype),
            added_cond_kwargs=self._added_conditions(latents, text),
        ).sample.float()
        if self.schedule is None:
            return output
        return noise_from_output(output, latents, self.schedule.alpha_bar(t), self.schedule.prediction_type)

    def _added_conditions(self, latents: torch.Tensor, text: TextEmbeddings) -> dict | None:
        if self.unet.config.get("addition_embed_type") != "text_time":
            return None
        if text.pooled is None:
            raise ValueError("an SDXL UNet needs pooled text embeddings for every row")
        height, width = (side * self.vae_scale_factor for side in latents.shape[2:])
        time_ids = torch.tensor([height, width, 0, 0, height, width], device=latents.device, dtype=self.unet.dtype)
        return {"text_embeds": text.pooled.to(self.unet.dtype), "time_ids": time_ids.expand(latents.shape[0], -1)}
