"""Masked editing: where a target may differ from its source, at latent resolution and in pixels.

A mask is white where the edit may happen. It is taken to the latent grid once, by one rule
(``latent_mask``): the mask is made binary (a pixel is white when its value is at least half of
full white), each latent pixel takes the fraction of white pixels in the area it covers (area
downsampling from the mask's own size), is in the mask when that fraction is at least
``MASK_THRESHOLD``, and the mask then grows by ``dilation`` latent pixels (a square neighbourhood).
The paste uses the same rule at the working image's size, without growing (``EditMask``).

Two ways to keep the rest of the image, both free of UNet rows:

- Latent blending (Avrahami et al., Blended Latent Diffusion, 2023): after each of the first
  ``blend_steps`` DDIM steps, a target's latents outside the mask become its source's latents at
  the same timestep (``blend``). The background is then the source's latent, decoded: the VAE's
  reconstruction of the photo, not its exact pixels. Costs one selection per step.
- The pixel paste: after decoding, the source's own pixels outside the mask, blended in over a
  feathered edge (``paste_alpha``, ``paste``); the background is then the photo's pixels exactly.
  Costs one composite per output. Where the paste's edge lies outside the latent mask, the two
  agree (both are the source); inside it, the paste keeps the model's pixels only within the
  painted mask and its feather, so the user's outline holds to the pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# A latent pixel is in the mask when at least this fraction of the pixels it covers is white: the
# majority, so the latent region follows the painted outline to within half a latent pixel.
MASK_THRESHOLD = 0.5


def binary_mask(values: torch.Tensor) -> torch.Tensor:
    """(H, W) grey values in [0, 1] -> (H, W) bool: white where the edit may happen."""
    return values >= 0.5


@dataclass(frozen=True)
class EditMask:
    """An image's mask at the two sizes the method uses: the latent grid (blending) and the working image (paste)."""

    latent: torch.Tensor  # (1, 1, h, w) bool
    pixels: torch.Tensor  # (1, 1, H, W) bool

    @classmethod
    def of(cls, white: torch.Tensor, working: tuple[int, int], scale: int, dilation: int = 0) -> EditMask:
        """The masks of an (H0, W0) bool mask for a working image of ``working`` = (W, H) pixels, ``scale`` of
        which make a latent pixel."""
        width, height = working
        return cls(latent_mask(white, (height // scale, width // scale), dilation), resized(white, (height, width)))


def latent_mask(white: torch.Tensor, size: tuple[int, int], dilation: int = 0) -> torch.Tensor:
    """The (1, 1, h, w) bool latent mask of an (H, W) bool pixel mask, ``size`` = (h, w): the module's rule."""
    return grow(resized(white, size), dilation)


def resized(white: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An (H, W) bool mask at ``size`` = (h, w), (1, 1, h, w): area downsampling (or upsampling), then the threshold."""
    coverage = F.interpolate(white[None, None].float(), size=size, mode="area")
    return coverage >= MASK_THRESHOLD


def grow(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """A (n, 1, h, w) bool mask grown by ``pixels`` in every direction (a square neighbourhood)."""
    if pixels == 0:
        return mask
    return F.max_pool2d(mask.float(), 2 * pixels + 1, stride=1, padding=pixels) > 0


def blend(x: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The targets ``x`` inside ``mask``, their sources' latents ``source`` outside it: a selection, exact bits."""
    return torch.where(mask, x, source)


def paste_alpha(pixels: torch.Tensor, feather: int) -> torch.Tensor:
    """The (1, 1, H, W) float weight of a target's pixels in the paste, from the (1, 1, H, W) bool mask ``pixels``.

    The weight is 1 on the mask's pixels and 0 further than ``feather`` pixels from them (measured
    along rows, columns or diagonals), with a ramp between: the mask grown by ``feather // 2``
    pixels, then averaged over a square of the same radius.
    """
    radius = feather // 2
    if radius == 0:
        return pixels.float()
    grown = grow(pixels, radius).float()
    return F.avg_pool2d(grown, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


def paste(decoded: torch.Tensor, source: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The decoded target where ``alpha`` is 1, the source's pixels where it is 0 (exactly), a mix between."""
    return alpha * decoded + (1 - alpha) * source
