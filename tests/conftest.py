"""Shared fixtures: a tiny random-weight Stable Diffusion model, saved and loaded through the real loader."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pnp.editor import PnPEditor  # noqa: E402
from pnp.models import load_pipeline, quiet_library_output  # noqa: E402
from pnp.random_models import save_random_pipeline  # noqa: E402

quiet_library_output()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny SD-1.5-layout model with random weights, as a diffusers folder."""
    return save_random_pipeline("tiny", tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def editor(tiny_model_dir):
    """A float32 CPU editor on the tiny model, shared by the tests that leave it clean."""
    return PnPEditor(load_pipeline(tiny_model_dir, device="cpu", dtype=torch.float32))


@pytest.fixture
def photo():
    """A deterministic 160x128 RGB test image with structure (gradients and a square)."""
    y, x = np.mgrid[0:128, 0:160]
    pixels = np.stack([x * 255 / 159, y * 255 / 127, np.full_like(x, 90.0)], axis=-1)
    pixels[40:90, 60:120] = (250, 30, 30)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")
