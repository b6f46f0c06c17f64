"""Random-weight CLIP and DINO-ViT models built from the real transformers classes, saved as model folders.

They stand in for the metric models where none can be downloaded (tests, smoke runs with
``--model tiny``) and load through the same code as real ones. Their scores mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, ViTConfig, ViTModel

from pnp.pipelines.random_models import byte_level_tokenizer

CLIP_IMAGE_SIZE = 32  # the real models read 224 px; the tiny one reads less to stay fast


def save_random_clip(folder: str | Path, seed: int = 0) -> Path:
    """A tiny CLIP model and its processor (byte-level tokenizer, 32 px images) in ``folder``."""
    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    small = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2}
    config = CLIPConfig(
        text_config={
            **small,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={**small, "image_size": CLIP_IMAGE_SIZE, "patch_size": 8},
        projection_dim=16,
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": CLIP_IMAGE_SIZE}, crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE}
    )
    folder = Path(folder)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_random_dino(folder: str | Path, seed: int = 0) -> Path:
    """A tiny ViT with DINO ViT-B/8's patch size and input size (so as many tokens), narrow and two layers deep."""
    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, patch_size=8, image_size=224
    )
    folder = Path(folder)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder
