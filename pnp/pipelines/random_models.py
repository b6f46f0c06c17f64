"""Random-weight Stable Diffusion pipelines built from the real diffusers classes.

They let tests, smoke runs and benchmarks exercise the real module names and the real loading
code without downloaded weights. Their outputs are noise.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from pnp.pipelines.loading import RANDOM_MODELS

_CROSS_DOWN = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
_CROSS_UP = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
# Stable Diffusion's noise schedule (1.x, 2.x and XL share it).
_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
# The small models' latent sides, so their own sizes (times the VAE's 8) are 128, 192 and 256 px:
# a third of SD 1.x's 512, SD 2.1's 768 and SDXL's 1024.
_TINY_SAMPLE_SIZES = {"tiny": 16, "tiny-v": 24, "tiny-sdxl": 32}


def build_random_pipeline(kind: str, seed: int = 0) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """Build a random-weight pipeline of one of ``RANDOM_MODELS``.

    ``tiny``: SD 1.5 layout, small widths; ``tiny-v``: SD 2.x layout (linear attention projections,
    GELU text encoder) predicting v; ``tiny-sdxl``: SDXL layout (two text encoders, pooled
    embeddings and time ids, 1 / 2 / 10 transformer blocks per attention, force_zeros_for_empty_prompt,
    an Euler scheduler config); ``random-sd15``: SD 1.5 shapes, 1.07B parameters.
    """
    if kind not in RANDOM_MODELS:
        raise ValueError(f"random model: {kind!r} is not one of {', '.join(RANDOM_MODELS)}")
    if kind == "tiny-sdxl":
        return _tiny_sdxl(seed)
    full = kind == "random-sd15"
    sd2 = kind == "tiny-v"
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
        sample_size=64 if full else _TINY_SAMPLE_SIZES[kind],
        use_linear_projection=sd2,
    )
    vae = _vae(full)
    text_encoder = CLIPTextModel(_text_config(tokenizer, text_width, full, "gelu" if sd2 else "quick_gelu"))
    scheduler = DDIMScheduler(
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type="v_prediction" if sd2 else "epsilon",
        **_BETAS,
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


def _tiny_sdxl(seed: int) -> StableDiffusionXLPipeline:
    """SDXL's layout at small widths: the real module names (``up_blocks.0.attentions.2.transformer_blocks.9``)."""
    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    width, pooled, time_width = 32, 32, 8
    unet = UNet2DConditionModel(
        sample_size=_TINY_SAMPLE_SIZES["tiny-sdxl"],
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=2 * width,  # the two encoders' hidden states, side by side
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_width,
        projection_class_embeddings_input_dim=pooled + 6 * time_width,  # pooled text, then six time ids
        norm_num_groups=8,
    )
    vae = _vae(False, scaling_factor=0.13025)  # SDXL's; force_upcast stays True, as in SDXL's VAE config
    text_encoder = CLIPTextModel(_text_config(tokenizer, width, False, "quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer, width, False, "gelu", projection_dim=pooled))
    scheduler = EulerDiscreteScheduler(timestep_spacing="leading", **_BETAS)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=byte_level_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _vae(full: bool, scaling_factor: float = 0.18215) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512) if full else (8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2 if full else 1,
        latent_channels=4,
        norm_num_groups=32 if full else 8,
        sample_size=512 if full else 64,
        scaling_factor=scaling_factor,
    )


def _text_config(tokenizer: CLIPTokenizer, width: int, full: bool, activation: str, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408 if full else len(tokenizer),
        hidden_size=width,
        intermediate_size=3072 if full else 37,
        num_attention_heads=12 if full else 4,
        num_hidden_layers=12 if full else 2,
        max_position_embeddings=77,
        hidden_act=activation,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


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


def byte_level_tokenizer(words: tuple[str, ...] = ()) -> CLIPTokenizer:
    """A CLIP tokenizer over single bytes plus a few merges: real tokenization code, tiny vocabulary.

    Each of ``words`` becomes one token (merges that build it letter by letter are added until the
    tokenizer reads it whole); any other text still tokenizes, byte by byte.
    """
    merges = [("t", "h"), ("th", "e</w>"), ("o", "f</w>"), ("a", "n"), ("an", "d</w>")]
    tokenizer = _tokenizer(merges)
    for word in words:
        while len(pieces := tokenizer.tokenize(word)) > 1:
            merges.append((pieces[0], pieces[1]))
            tokenizer = _tokenizer(merges)
    return tokenizer


def _tokenizer(merges: list[tuple[str, str]]) -> CLIPTokenizer:
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + list(dict.fromkeys("".join(m) for m in merges))
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
