"""The images a pipeline call accepts: PIL images, (H, W, 3) arrays and (3, H, W) tensors, one or a list."""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

from pnp.config import ConfigError
from pnp.images import to_rgb


def listed(image) -> list:
    """The call's images as a list."""
    return list(image) if isinstance(image, (list, tuple)) else [image]


def as_pil(image) -> PIL.Image.Image:
    """A PIL image from a PIL image, an (H, W, 3) array (uint8, or floats in [0, 1]) or a (1,) 3 x H x W tensor in [0,
    1]."""
    if isinstance(image, PIL.Image.Image):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        tensor = image[0] if image.ndim == 4 and image.shape[0] == 1 else image
        if tensor.ndim != 3 or tensor.shape[0] != 3:
            raise ConfigError("image", f"a tensor image must be (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
        image = tensor.permute(1, 2, 0).float().cpu().numpy()
    if image.ndim != 3 or image.shape[2] != 3:
        raise ConfigError("image", f"an array image must be (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        if not np.isfinite(image).all():
            raise ConfigError(
                "image", "float image values must be finite numbers in [0, 1]; this one holds NaN or infinity"
            )
        if image.min() < 0 or image.max() > 1:
            raise ConfigError("image", f"float image values must lie in [0, 1], got {image.min():g} to {image.max():g}")
        image = (image * 255).round().astype(np.uint8)
    return PIL.Image.fromarray(image, "RGB")
