"""The translation loop: all target prompts sampled together, the source's features injected."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .config import PnPConfig
from .ddim import DDIMSchedule, ddim_step
from .guidance import guided_noise, negative_prompt_alphas
from .injection import FeatureInjector
from .inversion import Trajectory
from .unet import NoisePredictor


@dataclass
class Prompts:
    """Text embeddings of a translation, each (n, 77, D)."""

    targets: torch.Tensor  # one row per target prompt
    uncond: torch.Tensor  # the empty prompt
    negative: torch.Tensor | None  # None when there is no negative prompt


def translate(
    predict: NoisePredictor,
    ddim: DDIMSchedule,
    source: Trajectory,
    prompts: Prompts,
    config: PnPConfig,
    progress: bool = False,
) -> torch.Tensor:
    """Sample one latent per target prompt from the source's noisiest latent; returns (P, 4, h, w).

    Each step runs, per chunk of at most ``max_batch_size`` prompts, one UNet call on
    [source row (first chunk, inside an injection window only), uncond/negative rows, cond rows].
    """
    count = len(prompts.targets)
    size = config.max_batch_size or count
    chunks = [slice(start, min(start + size, count)) for start in range(0, count, size)]
    pairs = ddim.sampling_pairs(config.steps)
    alphas = negative_prompt_alphas(config.negative_prompt_schedule, config.negative_prompt_alpha, config.steps)
    x = source.latents[pairs[0][0]].repeat(count, 1, 1, 1)
    with FeatureInjector(predict.unet) as injector:
        for i, (t, t_next) in enumerate(tqdm(pairs, desc="translation", disable=not progress)):
            residual = i < config.feature_injection_steps
            attention = i < config.attention_injection_steps
            for chunk_index, rows in enumerate(chunks):
                with_source = (residual or attention) and chunk_index == 0
                injector.set_step(residual, attention, with_source)
                source_latent = source.latents[t] if with_source else None
                eps = _guided_eps(predict, t, x[rows], source_latent, source.embedding, prompts, rows, alphas[i], config.scale)
                x[rows] = ddim_step(x[rows], eps, ddim.alpha_bar(t), ddim.alpha_bar(t_next))
    return x


def _guided_eps(predict, t, x, source_latent, source_embedding, prompts, rows, alpha, scale) -> torch.Tensor:
    """One UNet call for a chunk of k prompts, only with the rows this step's guidance weights need."""
    k = x.shape[0]
    terms = []  # (name, embeddings) in batch order, k rows each
    if prompts.negative is None or alpha > 0:
        terms.append(("uncond", prompts.uncond.expand(k, -1, -1)))
    if prompts.negative is not None and alpha < 1:
        terms.append(("negative", prompts.negative.expand(k, -1, -1)))
    terms.append(("cond", prompts.targets[rows]))

    latents = [x] * len(terms)
    embeddings = [e for _, e in terms]
    if source_latent is not None:
        latents.insert(0, source_latent)
        embeddings.insert(0, source_embedding)
    eps = predict(torch.cat(latents), t, torch.cat(embeddings))
    if source_latent is not None:
        eps = eps[1:]
    parts = dict(zip((name for name, _ in terms), eps.split(k)))
    return guided_noise(parts.get("uncond"), parts.get("negative"), parts["cond"], alpha, scale)
