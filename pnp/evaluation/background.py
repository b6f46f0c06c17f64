"""PIE-Bench's background preservation: PSNR, LPIPS, MSE and SSIM between source and output outside the edit.

Both images, in 0..1, are multiplied by (1 - mask) and compared over the whole frame, as
PIE-Bench's evaluation does (so the edited region counts as a perfect match). PSNR, MSE and SSIM
are torchmetrics' (PSNR and SSIM with data range 1), LPIPS its SqueezeNet variant on [-1, 1]
inputs. Where the mask leaves no background, every value is NaN (PIE-Bench: "nan").
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

METRICS = ("psnr", "lpips", "mse", "ssim")


@torch.inference_mode()
def background_scores(
    source: Image.Image, output: Image.Image, mask: np.ndarray, lpips=None
) -> dict[str, float | None]:
    """The four background scores; ``lpips`` is the LPIPS metric or None where it is unavailable (its score is then
    None)."""
    from torchmetrics.functional import mean_squared_error
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    keep = 1.0 - mask
    if not keep.any():
        return {name: math.nan for name in METRICS}
    a, b = (_masked_tensor(image, keep) for image in (source, output))
    scores = {
        "psnr": peak_signal_noise_ratio(a, b, data_range=1.0).item(),
        "mse": mean_squared_error(a, b).item(),
        "ssim": structural_similarity_index_measure(a, b, data_range=1.0).item(),
        "lpips": None,
    }
    if lpips is not None:
        device = lpips.device
        scores["lpips"] = lpips(a.to(device) * 2 - 1, b.to(device) * 2 - 1).item()
        lpips.reset()  # torchmetrics keeps every batch's score otherwise
    return scores


def _masked_tensor(image: Image.Image, keep: np.ndarray) -> torch.Tensor:
    """(1, 3, H, W) float32 in 0..1, multiplied by ``keep`` (H, W)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255 * keep[:, :, None]
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()
