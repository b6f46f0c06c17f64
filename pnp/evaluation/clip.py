"""CLIP text-image similarity: the paper's cosine, and PIE-Bench's CLIPScore, 100 * max(cosine, 0).

PIE-Bench scores with torchmetrics' CLIPScore, which runs CLIPProcessor and CLIPModel exactly as
here; computing the cosine once serves both forms. The edited-region score multiplies the image
by the mask before CLIP sees it (PIE-Bench: ``uint8(image * mask)``).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


class ClipSimilarity:
    """Cosine similarities between images and texts with one CLIP model and its processor."""

    def __init__(self, model, processor) -> None:
        self.model, self.processor = model, processor

    @torch.inference_mode()
    def cosines(self, images: list[Image.Image], texts: list[str]) -> list[float]:
        """The cosine of each image's embedding with its text's (pairwise, in order)."""
        device = self.model.device
        limit = self.processor.tokenizer.model_max_length
        inputs = self.processor(
            text=texts, images=images, return_tensors="pt", padding=True, truncation=True, max_length=limit
        )
        image_embeds = _features(self.model.get_image_features(pixel_values=inputs["pixel_values"].to(device)))
        text_embeds = _features(
            self.model.get_text_features(
                input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device)
            )
        )
        cosines = torch.nn.functional.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)
        return cosines.tolist()


def clip_score(cosine: float) -> float:
    """PIE-Bench's CLIPScore (torchmetrics): 100 times the cosine, negative values counted as 0."""
    return 100 * max(cosine, 0.0)


def masked(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The image with everything outside ``mask`` (an (H, W) array of 0 and 1) black, as PIE-Bench feeds CLIP."""
    pixels = np.asarray(image, dtype=np.float32) * mask[:, :, None]
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def _features(output) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output holds the projected embeddings; 4.x a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output
