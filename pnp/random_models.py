"""Random-weight Stable Diffusion pipelines built from the real diffusers classes.

They let tests, smoke runs and benchmarks exercise the real module names and the real loading
code without downloaded weights. Their outputs are noise.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .models import RANDOM_MODELS


_CROSS_DOWN = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
_CROSS_UP = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3


def build_random_pipeline(kind: str, seed: int = 0) -> StableDiffusionPipeline:
    """Build ``tiny`` (SD 1.5 layout, small widths) or ``random-sd15`` (SD 1.5 shapes, 1.07B parameters)."""
    if kind not in RANDOM_MODELS:
        raise ValueError(f"random model: {kind!r} is not one of {', '.join(RANDOM_MODELS)}")
    full = kind == "random-sd15"
    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    text_width = 768 if full else 32
    unet = UNet2DConditionModel(
        block_out_channels=(320, 640, 1280, 1280) if full else (32, 32, 64, 64),
        down_block_types=_CROSS_DOWN,
        up_block_types=_CROSS_UP,
        layers_per_block=2,
        cross_attention_dim=text_width,
        attention_head_dim=8,
        norm_num_groups=32 if full else 8,
        sample_size=64 if full else 8,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512) if full else (8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2 if full else 1,
        latent_channels=4,
        norm_num_groups=32 if full else 8,
        sample_size=512 if full else 64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408 if full else len(tokenizer),
            hidden_size=text_width,
            intermediate_size=3072 if full else 37,
            num_attention_heads=12 if full else 4,
            num_hidden_layers=12 if full else 2,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_random_safety_checker(seed: int = 0) -> tuple[StableDiffusionSafetyChecker, CLIPImageProcessor]:
    """A tiny Stable Diffusion safety checker (the real class, random weights) and its feature extractor.

    Which images it flags depends on its random concept embeddings and thresholds
    (``concept_embeds``, ``concept_embeds_weights``), which tests set as they need.
    """
    torch.manual_seed(seed)
    small = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    config = CLIPConfig(
        text_config=dict(vocab_size=99, max_position_embeddings=77, **small),
        vision_config=dict(image_size=32, patch_size=8, **small),
        projection_dim=16,
    )
    extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return StableDiffusionSafetyChecker(config).eval(), extractor


def save_random_pipeline(kind: str, folder: str | Path, seed: int = 0) -> Path:
    """Build a random pipeline and save it as a diffusers folder that ``load_pipeline`` reads."""
    folder = Path(folder)
    build_random_pipeline(kind, seed).save_pretrained(folder)
    return folder


@contextmanager
def random_model_folder(kind: str, seed: int = 0):
    """A temporary diffusers folder holding a random pipeline, removed on exit."""
    with tempfile.TemporaryDirectory(prefix=f"pnp-{kind}-") as tmp:
        yield save_random_pipeline(kind, Path(tmp) / kind, seed)


def byte_level_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over single bytes plus a few merges: real tokenization code, tiny vocabulary."""
    symbols = _byte_symbols()
    merges = [("t", "h"), ("th", "e</w>"), ("o", "f</w>"), ("a", "n"), ("an", "d</w>")]
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=merges, model_max_length=77)


def _byte_symbols() -> list[str]:
    """The printable stand-in character of each byte, as GPT-2 and CLIP byte-level BPE define it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return list(symbols.values())
