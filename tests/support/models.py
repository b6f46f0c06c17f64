"""Tiny models for the tests: loading the random pipelines, and random LoRA adapters and safety checkers.

The pipelines themselves are the package's (``pnp.pipelines.random_models``): the command line opens
them by name. What only tests need lives here.
"""

import json
from pathlib import Path

import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig, CLIPImageProcessor

from pnp.pipelines.pipeline_pnp import PnPPipeline
from pnp.pipelines.random_models import build_random_pipeline

# Equal weights in two model instances are not bit-identical in use. Where a weight sits in memory
# depends on how it was loaded (a view into one file or another, or a copy: accelerate's offload
# hooks re-allocate every weight), and the CPU's matrix kernels choose their SIMD paths by the
# operands' alignment, so float32 products are summed in another order. On an AMD EPYC, moving
# the tiny UNet's weights to each 4-byte offset modulo 64 moved the latents of a translation
# (3 inversion and 3 sampling steps, latents up to 5.1 in size) by 0 to 7.9e-5, with a period of
# 16 bytes, and the same weights at the same alignment gave the same bits. Another processor
# takes other paths: the latents an Intel Xeon stored (tests/data/engine-v0-latents.npz) differ from
# the AMD EPYC's by up to 1.5e-4 on latents up to 8.5. 5e-4 (1e-4 of the latents' size) covers both with a 3x margin;
# a target translated without injection differs by 0.85. Bit-identity is asserted only for the
# same weights in the same memory, run on the same inputs.
INSTANCE_TOLERANCE = dict(rtol=0, atol=5e-4)


def load_tiny(folder, source_cache: bool = False) -> PnPPipeline:
    """A tiny model as a float32 CPU pipeline without progress bars.

    Its source cache is off unless asked for: tests that count UNet rows or compare runs on the
    same photo expect every call to invert afresh (tests/method/test_cache.py tests the cache).
    """
    pipe = PnPPipeline.from_pretrained(folder, device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    if not source_cache:
        pipe.set_source_cache(0)
    return pipe


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


def save_random_lora(kind: str, folder: str | Path, seed: int = 1, rank: int = 4) -> Path:
    """A random LoRA adapter for the UNet of random model ``kind`` (on every attention projection), saved as
    diffusers saves LoRA weights: ``folder``/pytorch_lora_weights.safetensors. Returns the file."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = build_random_pipeline(kind)
    torch.manual_seed(seed)
    # Random up and down matrices (peft starts "up" at zero, which would change nothing).
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
    )
    pipe.unet.add_adapter(config)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    type(pipe).save_lora_weights(folder, unet_lora_layers=layers)
    return Path(folder) / "pytorch_lora_weights.safetensors"


def safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    """A file in the safetensors format: the header's length (8 bytes, little-endian), the header, the data."""
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data
