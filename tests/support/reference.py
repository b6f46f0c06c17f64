"""Plain computations the tests compare the package's own with: pixels from VAE output, dense attention maps."""

import torch
from PIL import Image


def tensor_to_images(decoded: torch.Tensor) -> list[Image.Image]:
    """VAE output (n, 3, H, W) in about [-1, 1] -> RGB images: clamp(x / 2 + 0.5, 0, 1) * 255, rounded."""
    pixels = (decoded.float() / 2 + 0.5).clamp(0, 1) * 255
    arrays = pixels.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(array, "RGB") for array in arrays]


def dense_attention_maps(maps) -> torch.Tensor:
    """The whole matrix (images * P, heads * P) of a ``SelfAttentionMaps``, block by block, for small layers."""
    out = torch.empty(maps.shape, device=maps.q.device)
    for image, rows in maps._blocks():
        out[maps._rows(image, rows)] = maps.maps(image, rows).transpose(0, 1).reshape(rows.stop - rows.start, -1)
    return out
