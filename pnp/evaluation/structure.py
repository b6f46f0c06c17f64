"""Structure distance (Splice, Tumanyan et al. 2022; the one the PnP authors point to, and PIE-Bench's).

For each image: resize so the short side is 224 (the long side at most 480), bilinear without
antialiasing, normalise with ImageNet's mean and std, run DINO-ViT, take the keys of the last
block (all heads concatenated, CLS token included) and their cosine self-similarity matrix. The
distance is the mean squared error between the source's matrix and the output's.

Two input scales, both named: ``splice`` feeds images in 0..1 to the normalisation, as the
definition intends; ``pie-bench`` feeds 0..255, as PIE-Bench's evaluation code does, so its
numbers compare with PIE-Bench's published table (and not with the other variant).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from pnp.evaluation.metrics import PIE_BENCH_INPUT, SPLICE_INPUT, STRUCTURE_VARIANTS

# The value each variant feeds the normalisation for a full-intensity pixel.
_FULL_SCALE = {SPLICE_INPUT: 1.0, PIE_BENCH_INPUT: 255.0}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SHORT_SIDE, MAX_LONG_SIDE = 224, 480


def resized_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) with the short side 224 and the long side at most 480, rounded down as torchvision's Resize
    does."""
    short, long = sorted((height, width))
    new_short, new_long = SHORT_SIDE, int(SHORT_SIDE * long / short)
    if new_long > MAX_LONG_SIDE:
        new_short, new_long = int(MAX_LONG_SIDE * new_short / new_long), MAX_LONG_SIDE
    return (new_short, new_long) if height <= width else (new_long, new_short)


def preprocess(image: Image.Image, variant: str) -> torch.Tensor:
    """A (1, 3, h, w) float32 tensor: the image at ``variant``'s scale, resized, ImageNet-normalised."""
    if variant not in STRUCTURE_VARIANTS:
        raise ValueError(f"structure variant: {variant!r} is not one of {', '.join(STRUCTURE_VARIANTS)}")
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]
    pixels = pixels * (_FULL_SCALE[variant] / 255.0)
    # Bilinear without antialiasing: what torchvision's Resize did to tensors in Splice's and
    # PIE-Bench's environments (torchvision before 0.17).
    pixels = torch.nn.functional.interpolate(
        pixels, size=resized_size(*pixels.shape[-2:]), mode="bilinear", align_corners=False, antialias=False
    )
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


class StructureDistance:
    """DINO-ViT key self-similarity distances with one ViTModel (transformers)."""

    def __init__(self, model) -> None:
        self.model = model

    def distance(self, source: Image.Image, output: Image.Image, variant: str) -> float:
        """MSE between the key self-similarity matrices of ``source`` and ``output``."""
        a, b = self.self_similarity(source, variant), self.self_similarity(output, variant)
        if a.shape != b.shape:
            raise ValueError(
                f"structure distance: the images have {a.shape[0]} and {b.shape[0]} tokens; give same-size images"
            )
        return torch.nn.functional.mse_loss(b, a).item()

    @torch.inference_mode()
    def self_similarity(self, image: Image.Image, variant: str) -> torch.Tensor:
        """The (tokens, tokens) cosine self-similarity of the last block's keys, CLS token first."""
        keys = self.last_keys(preprocess(image, variant).to(self.model.device))[0]
        keys = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        return keys @ keys.T

    def last_keys(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(1, tokens, heads * head_dim): the key projection's output in the last block, caught with a forward hook."""
        caught = []
        handle = _last_key_projection(self.model).register_forward_hook(lambda module, args, out: caught.append(out))
        try:
            self.model(pixel_values=pixel_values, interpolate_pos_encoding=True)
        finally:
            handle.remove()
        return caught[-1].float()


def _last_key_projection(model) -> torch.nn.Module:
    """The last block's key projection: ``layers[-1].attention.k_proj`` in transformers 5, ``encoder.layer[-1]...key``
    in 4."""
    if hasattr(model, "layers"):
        return model.layers[-1].attention.k_proj
    return model.encoder.layer[-1].attention.attention.key
