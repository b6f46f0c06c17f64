"""The cost floor of a translation: its text-encoder batch, UNet batch shapes and VAE work, run bare.

No injection hooks, no scheduler arithmetic, no dtype conversions, no guidance: only the network
calls that any implementation of the method with the same schedule must make.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

TIMESTEP = 500  # a UNet's cost does not depend on the timestep


@dataclass
class BareTimes:
    """Seconds of the bare replay, phase by phase."""

    text_s: float
    encode_s: float
    inversion_s: float
    translation_s: float
    decode_s: float

    @property
    def total_s(self) -> float:
        return self.text_s + self.encode_s + self.inversion_s + self.translation_s + self.decode_s


class BareReplay:
    """Bare UNet and VAE calls of a pipeline at one latent size, inputs made once per shape."""

    def __init__(self, pipe, width: int, height: int) -> None:
        self.unet, self.vae, self.text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
        self.tokens = pipe.tokenizer.model_max_length
        self.device, self.dtype = pipe.unet.device, pipe.unet.dtype
        self.width, self.height = width, height
        self.latent_size = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
        self.text_shape = (pipe.tokenizer.model_max_length, pipe.unet.config.cross_attention_dim)
        self._inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        generator = torch.Generator("cpu").manual_seed(0)
        pixels = torch.rand((1, 3, height, width), generator=generator) * 2 - 1
        self._pixels = pixels.to(self.device, self.vae.dtype)
        latent = torch.randn((1, 4, *self.latent_size), generator=generator)
        self._latent = latent.to(self.device, self.vae.dtype)

    @torch.inference_mode()
    def run(self, texts: int, inversion: list[int], translation: list[int], decodes: int) -> BareTimes:
        """Time one text-encoder batch of ``texts`` prompts, one VAE encode, the UNet calls of both
        phases, and ``decodes`` one-image decodes."""
        text_s = timed(lambda: self.encode_texts(texts), self.device)
        encode_s = timed(self.encode, self.device)
        inversion_s = timed(lambda: self.unet_calls(inversion), self.device)
        translation_s = timed(lambda: self.unet_calls(translation), self.device)
        decode_s = timed(lambda: [self.decode() for _ in range(decodes)], self.device)
        return BareTimes(text_s, encode_s, inversion_s, translation_s, decode_s)

    @torch.inference_mode()
    def warm_up(self, batch_sizes: set[int], vae: bool, texts: int = 0) -> None:
        """Run each shape once, so one-time costs (kernel selection, first touch of the weights)
        fall on neither the engine's run nor the replay."""
        self.unet_calls(sorted(batch_sizes))
        if texts:
            self.encode_texts(texts)
        if vae:
            self.encode()
            self.decode()

    def unet_calls(self, batch_sizes: list[int]) -> None:
        for rows in batch_sizes:
            latents, text = self.unet_inputs(rows)
            self.unet(latents, TIMESTEP, encoder_hidden_states=text).sample

    def encode_texts(self, count: int) -> torch.Tensor:
        """The text encoder on ``count`` padded prompts, as the pipeline encodes them (CLIP pads to its full length)."""
        ids = torch.zeros((count, self.tokens), dtype=torch.long, device=self.device)
        return self.text_encoder(ids)[0]

    def encode(self) -> torch.Tensor:
        return self.vae.encode(self._pixels).latent_dist.mean

    def decode(self) -> torch.Tensor:
        return self.vae.decode(self._latent).sample

    def unet_inputs(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random latents and text embeddings of ``rows`` rows, in the UNet's dtype, made once."""
        if rows not in self._inputs:
            generator = torch.Generator("cpu").manual_seed(rows)
            latents = torch.randn((rows, 4, *self.latent_size), generator=generator)
            text = torch.randn((rows, *self.text_shape), generator=generator)
            self._inputs[rows] = (latents.to(self.device, self.dtype), text.to(self.device, self.dtype))
        return self._inputs[rows]


def timed(work, device: torch.device) -> float:
    """Seconds ``work()`` takes, including the GPU work it queued."""
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
