"""The toy model shipped in the package: found by name everywhere, in Stable Diffusion's own format and layout."""

import json
import subprocess
import sys

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from pnp import PnPPipeline
from pnp.method.layers import LAYER_SETS, default_layer_set, missing_modules
from pnp.pipelines.loading import BUNDLED_MODELS, TOY_MODEL, model_location
from pnp.pipelines.named_models import open_model
from pnp.toy.world import SIZE, VOCABULARY

FOLDER = BUNDLED_MODELS[TOY_MODEL]


@pytest.fixture(scope="module")
def toy():
    pipe = PnPPipeline.from_pretrained("toy", device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_toy_model_loads_by_name_in_float32_through_the_real_loader(toy):
    assert model_location("toy") == FOLDER and (FOLDER / "model_index.json").is_file()
    assert isinstance(toy.unet, UNet2DConditionModel) and isinstance(toy.vae, AutoencoderKL)
    assert isinstance(toy.text_encoder, CLIPTextModel) and isinstance(toy.tokenizer, CLIPTokenizer)
    assert isinstance(toy.scheduler, DDIMScheduler)
    assert {p.dtype for p in toy.unet.parameters()} == {torch.float32}
    assert toy.default_resolution == SIZE


def test_it_is_stable_diffusion_1x_layout_with_its_schedule_and_the_sd_injection_layers(toy):
    config = toy.unet.config
    assert tuple(config.down_block_types) == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert tuple(config.up_block_types) == ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    assert config.layers_per_block == 2 and config.sample_size * toy.vae_scale_factor == SIZE
    sd = LAYER_SETS["sd"].layers(toy.unet)
    assert default_layer_set(toy.unet) == "sd" and toy.injection_layers == sd
    assert missing_modules(sd, toy.unet) == []
    # Stable Diffusion's own count: one transformer block per attention, so each named attention injects once.
    assert len(sd.attention) == 8 and sd.residual == ("up_blocks.1.resnets.1.conv2",)
    schedule = toy.scheduler.config
    assert (schedule.beta_schedule, schedule.beta_start, schedule.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert (schedule.num_train_timesteps, schedule.steps_offset, schedule.set_alpha_to_one) == (1000, 1, False)
    assert schedule.prediction_type == "epsilon"


def test_its_tokenizer_reads_every_caption_word_whole(toy):
    for word in VOCABULARY:
        assert len(toy.tokenizer.tokenize(word)) == 1, word


def test_the_committed_weights_are_small_float16_safetensors():
    weights = sorted(FOLDER.rglob("*.safetensors"))
    assert {w.parent.name for w in weights} == {"unet", "vae", "text_encoder"}
    assert sum(f.stat().st_size for f in FOLDER.rglob("*") if f.is_file()) < 25e6
    index = json.loads((FOLDER / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    for path in weights:  # as stored (from_pretrained would convert them to float32)
        assert {tensor.dtype for tensor in load_file(path).values()} == {torch.float16}, path
    assert not list(FOLDER.rglob("*.bin")) and not list(FOLDER.rglob("*.ckpt"))


def test_its_latents_have_about_unit_variance(toy):
    from pnp.method.vae import encode, image_to_tensor
    from pnp.toy.quality import sources

    latents = torch.cat([encode(toy.vae, image_to_tensor(r.image)) for r in sources(16)])
    assert 0.6 < latents.std() < 1.6


def test_open_model_and_the_command_line_find_it_by_name(tmp_path):
    with open_model("toy") as model:
        assert model == FOLDER
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pnp",
            "translate",
            "--model",
            "toy",
            "--generation-prompt",
            "a red circle",
            "--prompt",
            "a blue circle",
            "--steps",
            "4",
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert done.returncode == 0, done.stderr
    assert "model toy (PnPPipeline)" in done.stderr and "noise" not in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["00-source.png", "01-a-blue-circle.png"]


def test_every_file_of_the_model_is_package_data():
    """A non-editable `pip install .` copies exactly the files pyproject.toml's package-data globs name."""
    import tomllib

    globs = tomllib.loads((FOLDER.parents[2] / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {path for pattern in globs["pnp.toy"] for path in FOLDER.parent.glob(pattern)}
    assert shipped == {path for path in FOLDER.rglob("*") if path.is_file()}


def test_the_predictor_finds_it_by_name(monkeypatch, tmp_path):
    from pnp.pipelines.weights import locate_weights

    monkeypatch.delenv("PNP_WEIGHTS", raising=False)
    monkeypatch.setenv("PNP_MODEL", "toy")
    assert locate_weights(tmp_path / "weights") == FOLDER
