"""Shared fixtures: a tiny random-weight Stable Diffusion model, saved and loaded through the real loader.

Torch runs with one intra-op thread here and in every subprocess the tests start: on a 2-core
machine several test processes with default threads oversubscribe the cores (the suite took six
times longer). No tolerance in the suite depends on the thread count.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pnp.environment import configure_libraries  # noqa: E402

configure_libraries()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pnp.pipelines.random_models import save_random_pipeline  # noqa: E402
from support.models import load_tiny  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny SD-1.5-layout model with random weights, as a diffusers folder."""
    return save_random_pipeline("tiny", tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_v_model_dir(tmp_path_factory):
    """A tiny SD-2.x-layout model predicting v, with random weights, as a diffusers folder."""
    return save_random_pipeline("tiny-v", tmp_path_factory.mktemp("models") / "tiny-v")


@pytest.fixture(scope="session")
def tiny_sdxl_model_dir(tmp_path_factory):
    """A tiny SDXL-layout model with random weights, as a diffusers folder (saved by StableDiffusionXLPipeline)."""
    return save_random_pipeline("tiny-sdxl", tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def pipe(tiny_model_dir):
    """A float32 CPU pipeline on the tiny model, shared by the tests that leave it clean."""
    return load_tiny(tiny_model_dir)


@pytest.fixture
def photo():
    """A deterministic 160x128 RGB test image with structure (gradients and a square)."""
    y, x = np.mgrid[0:128, 0:160]
    pixels = np.stack([x * 255 / 159, y * 255 / 127, np.full_like(x, 90.0)], axis=-1)
    pixels[40:90, 60:120] = (250, 30, 30)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


@pytest.fixture(scope="session")
def clip_model_dir(tmp_path_factory):
    """A tiny CLIP model and processor with random weights, as a transformers folder."""
    from pnp.evaluation.random_metric_models import save_random_clip

    return save_random_clip(tmp_path_factory.mktemp("models") / "clip")


@pytest.fixture(scope="session")
def dino_model_dir(tmp_path_factory):
    """A tiny ViT with DINO ViT-B/8's patch and input size and random weights, as a transformers folder."""
    from pnp.evaluation.random_metric_models import save_random_dino

    return save_random_dino(tmp_path_factory.mktemp("models") / "dino")
