"""PnPEditor: a loaded Stable Diffusion model that turns a source and prompts into translated images."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .config import ConfigError, PnPConfig
from .ddim import DDIMSchedule
from .generation import generate
from .images import resize_for_model, tensor_to_image
from .inversion import Trajectory, encode_image, invert
from .models import load_pipeline
from .translate import Prompts, translate
from .unet import NoisePredictor


@dataclass
class PnPResult:
    """Translated images in prompt order, the generated source (generation mode), and measurements."""

    images: list[Image.Image]
    source_image: Image.Image | None
    metrics: dict[str, float] = field(default_factory=dict)
    unet_batch_sizes: list[int] = field(default_factory=list)


class PnPEditor:
    """Plug-and-play translation with one loaded pipeline; the pipeline is never left modified."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.ddim = DDIMSchedule.from_config(pipe.scheduler.config)

    @classmethod
    def from_pretrained(cls, model: str | Path, device: str | None = None, dtype=None) -> "PnPEditor":
        """Load a model folder or hub id; see ``pnp.models.load_pipeline``."""
        return cls(load_pipeline(model, device, dtype))

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    @torch.inference_mode()
    def __call__(self, config: PnPConfig, image: Image.Image | None = None, progress: bool = False) -> PnPResult:
        """Translate ``image`` (or a source generated from ``config.generation_prompt``) into every prompt.

        In generation mode an input image is ignored.
        """
        if not config.generation_prompt and image is None:
            raise ConfigError("source: give an input image or a generation prompt")
        predict = NoisePredictor(self.pipe.unet)
        metrics: dict[str, float] = {}
        generating = bool(config.generation_prompt)
        source_prompt = config.generation_prompt if generating else ""
        with self._timed(metrics, "encode_prompts_s"):
            prompts, source_embedding = self._embed(config, source_prompt)
        needed = self.ddim.timesteps(config.steps)
        if generating:
            with self._timed(metrics, "generation_s"):
                source = self._generate(predict, config, source_embedding, prompts.uncond, progress)
        else:
            with self._timed(metrics, "encode_s"):
                latent = encode_image(self.pipe.vae, resize_for_model(image, config.resolution))
            with self._timed(metrics, "inversion_s"):
                latents = invert(predict, self.ddim, latent, prompts.uncond, needed, config.inversion_steps, progress)
            source = Trajectory(latents, source_embedding)
        with self._timed(metrics, "translation_s"):
            latents = translate(predict, self.ddim, source, prompts, config, progress)
        with self._timed(metrics, "decode_s"):
            images = [self.decode(latent[None]) for latent in latents]
        metrics.update(unet_calls=predict.calls, unet_rows=predict.rows)
        return PnPResult(images, source.image, metrics, list(predict.batch_sizes))

    def decode(self, latent: torch.Tensor) -> Image.Image:
        """(1, 4, h, w) latent -> RGB image."""
        vae = self.pipe.vae
        decoded = vae.decode(latent.to(vae.dtype) / vae.config.scaling_factor).sample
        return tensor_to_image(decoded)

    def _embed(self, config: PnPConfig, source_prompt: str) -> tuple[Prompts, torch.Tensor]:
        texts = ["", source_prompt, config.negative_prompt, *config.prompts]
        embeddings, _ = self.pipe.encode_prompt(texts, self.device, 1, False)
        uncond, source, negative, targets = embeddings[:1], embeddings[1:2], embeddings[2:3], embeddings[3:]
        # An empty negative prompt embeds exactly as the unconditional one: no extra rows needed.
        return Prompts(targets, uncond, negative if config.negative_prompt else None), source

    def _generate(self, predict, config, cond, uncond, progress) -> Trajectory:
        side = config.resolution // self.pipe.vae_scale_factor
        generator = torch.Generator("cpu").manual_seed(config.seed)
        # Noise drawn on the CPU, so a seed gives the same source on every device.
        noise = torch.randn((1, 4, side, side), generator=generator).to(self.device)
        latents, clean = generate(predict, self.ddim, noise, uncond, cond, config.steps, config.generation_scale, progress)
        return Trajectory(latents, cond, self.decode(clean))

    @contextmanager
    def _timed(self, metrics: dict[str, float], name: str):
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        metrics[name] = time.perf_counter() - start
