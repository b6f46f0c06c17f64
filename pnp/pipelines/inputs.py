"""The images a pipeline call accepts: PIL images, (H, W, 3) arrays and (3, H, W) tensors, one or a list; and masks."""

from __future__ import annotations

import logging

import numpy as np
import PIL.Image
import torch

from pnp.config import ConfigError
from pnp.images import to_rgb, working_size
from pnp.method.mask import EditMask, binary_mask

logger = logging.getLogger("pnp.pipeline")


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


# --- Masks: white where the edit may happen ---

MASK_TYPES = (PIL.Image.Image, np.ndarray, torch.Tensor)
# Luminance weights (ITU-R 601, as Pillow's RGB -> L): a colour mask's grey value.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def mask_values(mask, label: str) -> np.ndarray:
    """A mask's (H, W) grey values in [0, 1] from a PIL image (any mode; transparent counts as black, so a drawing
    on a transparent layer marks its strokes), an (H, W), (H, W, 1) or (H, W, 3) array (bool, uint8, or floats in
    [0, 1]) or such a tensor channels first ((H, W), (1 or 3, H, W), with a leading 1). ConfigError("mask_image")
    otherwise, calling the mask ``label``."""
    if isinstance(mask, PIL.Image.Image):
        rgba = np.asarray(to_rgb(mask) if "A" not in mask.getbands() and mask.mode != "P" else mask.convert("RGBA"))
        alpha = rgba[..., 3] / 255.0 if rgba.shape[-1] == 4 else 1.0
        return (rgba[..., :3] @ _LUMA / 255.0 * alpha).astype(np.float32)
    if isinstance(mask, torch.Tensor):
        tensor = mask[0] if mask.ndim == 4 and mask.shape[0] == 1 else mask
        if tensor.ndim == 3 and tensor.shape[0] not in (1, 3):
            raise ConfigError(
                "mask_image", f"{label}: a tensor mask must be (H, W), (1, H, W) or (3, H, W), got {tuple(mask.shape)}"
            )
        mask = (tensor.permute(1, 2, 0) if tensor.ndim == 3 else tensor).cpu().numpy()
    shape = mask.shape
    if mask.ndim == 3 and shape[2] in (1, 3):
        mask = mask @ _LUMA if shape[2] == 3 else mask[..., 0]
    if mask.ndim != 2:
        raise ConfigError("mask_image", f"{label}: an array mask must be (H, W), (H, W, 1) or (H, W, 3), got {shape}")
    if mask.dtype == bool:
        return mask.astype(np.float32)
    if mask.dtype == np.uint8:
        return mask.astype(np.float32) / 255
    values = mask.astype(np.float32)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise ConfigError("mask_image", f"{label}: float mask values must be finite numbers in [0, 1]")
    return values


def edit_masks(masks: list, images: list[PIL.Image.Image], resolution: int, scale: int, dilation: int):
    """Each image's ``pnp.method.mask.EditMask`` (its latent and working-size masks), None where it has none.

    ``images`` are the inputs as given, translated at ``resolution``; ``scale`` is the VAE's factor. Each mask
    passes ``check_mask`` first; then ConfigError("mask_image") for one that marks too little for a latent
    pixel. Every check is made here, before any model work.
    """
    latent = []
    for n, (mask, image) in enumerate(zip(masks, images)):
        if mask is None:
            latent.append(None)
            continue
        label = mask_label(n, len(masks))
        white = check_mask(mask, image.size, resolution, label)
        result = EditMask.of(white, working_size(*image.size, resolution), scale, dilation)
        if not result.latent.any():
            raise ConfigError(
                "mask_image",
                f"{label}'s white area covers no {scale}x{scale} block of the working image by half or more, so "
                f"nothing could change: paint a larger area",
            )
        if result.latent.all():
            logger.warning(f"{label} keeps no latent pixel of the image: only the paste (mask_paste) would keep any")
        latent.append(result)
    return latent


def mask_label(index: int, count: int) -> str:
    """How an error names the mask at ``index`` of ``count``."""
    return "the mask" if count == 1 else f"mask {index + 1} of {count}"


def check_mask(mask, image_size: tuple[int, int], resolution: int | None, label: str) -> torch.Tensor:
    """The (H, W) bool white area of ``mask`` (any type ``mask_values`` reads) for an image of ``image_size`` =
    (W, H) translated at ``resolution``; ConfigError("mask_image") for a mask that breaks a rule, calling it
    ``label``. The pixel rules of every entry point, cheap enough to run before a model loads.

    A mask must have its image's aspect ratio: sized by the images' rule (``pnp.images.working_size``), it must
    land on its image's working size, so a mask of another size is scaled with its image (and a mask of the
    original photo fits an image already read at its working size). Without a ``resolution`` (the model's own,
    not known before it loads) that rule waits for ``edit_masks``. A mask must mark something and not
    everything.
    """
    values = mask_values(mask, label)
    if resolution is not None:
        _check_mask_size(values.shape[::-1], image_size, resolution, label)
    white = binary_mask(torch.from_numpy(values))
    if not white.any():
        raise ConfigError(
            "mask_image",
            f"{label} is all black: it allows no change anywhere; paint white where the edit may happen",
        )
    if white.all():
        raise ConfigError(
            "mask_image",
            f"{label} is all white: every pixel may change, which is the same as giving no mask; leave it out, "
            "or paint black where the image must stay as it is",
        )
    return white


def _check_mask_size(size: tuple[int, int], image_size: tuple[int, int], resolution: int, label: str) -> None:
    """A mask of ``size`` must land on its image's working size."""
    working = working_size(*image_size, resolution)
    try:
        masked = working_size(*size, resolution)
    except ConfigError as err:
        raise ConfigError("mask_image", f"{label}: {err.reason}") from None
    if masked != working:
        (mw, mh), (iw, ih) = size, image_size
        raise ConfigError(
            "mask_image",
            f"{label} is {mw}x{mh} pixels but its image is {iw}x{ih}: another aspect ratio ({mw / mh:.3g} against "
            f"{iw / ih:.3g}; at resolution {resolution} they are {masked[0]}x{masked[1]} and "
            f"{working[0]}x{working[1]}); give a mask of the image's size, white where the edit may happen",
        )
