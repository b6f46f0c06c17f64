"""The source trajectory of a generated image: DDIM text-to-image with guidance, every latent recorded."""

from __future__ import annotations

import torch

from pnp.method.ddim import DDIMSchedule, StepEnd, ddim_step
from pnp.method.guidance import guided_noise
from pnp.method.noise_predictor import NoisePredictor
from pnp.method.text import TextEmbeddings


def noise_generator(seed: int) -> torch.Generator:
    """The random generator of a generated source's initial noise, seeded with ``seed``.

    A CPU generator: the pipeline draws the noise on the CPU with it, so a seed gives the same source
    on every device.
    """
    return torch.Generator("cpu").manual_seed(seed)


def generate(
    predict: NoisePredictor,
    schedule: DDIMSchedule,
    noise: torch.Tensor,
    uncond: TextEmbeddings,
    cond: TextEmbeddings,
    steps: int,
    scale: float,
    step_end: StepEnd | None = None,
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Sample from ``noise`` (1, 4, h, w) with guidance ``scale``.

    Returns the latent entering each timestep (the first is ``noise`` itself) and the final clean latent.
    """
    embeddings = TextEmbeddings.cat([uncond, cond])
    latents, z = {}, noise
    for i, (t, t_next) in enumerate(schedule.sampling_pairs(steps)):
        latents[t] = z
        eps_uncond, eps_cond = predict(torch.cat([z, z]), t, embeddings).chunk(2)
        eps = guided_noise(eps_uncond, None, eps_cond, 1.0, scale)
        z = ddim_step(z, eps, schedule.alpha_bar(t), schedule.alpha_bar(t_next))
        if step_end is not None and (z := step_end(i, t, z)) is None:
            break
    return latents, z
