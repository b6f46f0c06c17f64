"""Loading: local folders, hub ids offline, device and dtype choice, random models through the real loader."""

import os
import subprocess
import sys

import pytest
import torch
from diffusers import UNet2DConditionModel

from pnp import devices
from pnp.config import ConfigError
from pnp.devices import default_dtype
from pnp.pipelines.loading import ModelError, model_location, own_resolution
from pnp.pipelines.pipeline_pnp import PnPPipeline
from pnp.pipelines.random_models import build_random_pipeline
from support.hub import unreachable_hub_env
from support.paths import ROOT


def load_pipeline(model, **kwargs):
    return PnPPipeline.from_pretrained(model, **kwargs)


def test_tiny_model_round_trips_through_the_loader(tiny_model_dir):
    built = build_random_pipeline("tiny")
    loaded = load_pipeline(tiny_model_dir, device="cpu", dtype="float32")
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(built, name).state_dict(), getattr(loaded, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert loaded.safety_checker is None
    assert loaded.tokenizer("a photo of a cat").input_ids == built.tokenizer("a photo of a cat").input_ids


def test_dtype_override_and_names(tiny_model_dir):
    assert load_pipeline(tiny_model_dir, device="cpu", dtype="bfloat16").unet.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="^dtype: 'float8' is not one of float32, float16, bfloat16$"):
        load_pipeline(tiny_model_dir, device="cpu", dtype="float8")


def test_default_dtype_follows_the_hardware(monkeypatch):
    assert default_dtype("cuda") == torch.float16
    monkeypatch.setattr(devices, "cpu_has_bfloat16", lambda: True)
    assert default_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(devices, "cpu_has_bfloat16", lambda: False)
    assert default_dtype("cpu") == torch.float32


def test_missing_folder_and_offline_hub_give_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_pipeline(tmp_path / "nothing", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a complete diffusers"):
        load_pipeline(tmp_path / "empty", device="cpu")
    with pytest.raises(ModelError) as error:
        load_pipeline("CompVis/stable-diffusion-v1-4", device="cpu")
    message = str(error.value)
    assert "CompVis/stable-diffusion-v1-4" in message and "download-weights" in message
    assert "\n" not in message


# Loads a hub id where the hub's name does not resolve, timing only the load (imports take long on a busy machine).
UNREACHABLE_PROBE = """
import time
from pnp.environment import configure_libraries
configure_libraries()
from pnp.pipelines.loading import ModelError, model_location, own_resolution
from pnp import PnPPipeline
start = time.perf_counter()
try:
    PnPPipeline.from_pretrained("pnp-tests/no-such-model", device="cpu")
except ModelError as err:
    print(f"{time.perf_counter() - start:.2f}", err, sep="\\n")
"""


def test_a_hub_whose_name_does_not_resolve_fails_at_once_without_retries(tmp_path):
    """Offline, the hub client retried five times with backoff (23 s of waiting) before the clear error."""
    env = {**os.environ, **unreachable_hub_env(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", UNREACHABLE_PROBE], capture_output=True, text=True, env=env, timeout=300
    )
    seconds, message = done.stdout.strip().split("\n")
    assert float(seconds) < 5 and "pnp-tests/no-such-model" in message and "download-weights" in message
    assert "Retry" not in done.stderr and "thrown while requesting" not in done.stderr, done.stderr


def test_cuda_asked_for_without_a_gpu(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError) as caught:
        load_pipeline(tiny_model_dir, device="cuda")
    # Each entry point names the parameter its own way (--device, PNP_DEVICE: tests of the CLI and the predictor).
    assert (caught.value.param, caught.value.reason) == (
        "device",
        "cuda was asked for but no CUDA GPU is available; use cpu",
    )


def test_every_prediction_type_loads_and_others_are_refused(tmp_path, tiny_v_model_dir):
    loaded = load_pipeline(tiny_v_model_dir, device="cpu", dtype="float32")
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    pipe = build_random_pipeline("tiny")
    pipe.scheduler.register_to_config(prediction_type="flow")
    pipe.save_pretrained(tmp_path / "flow")
    with pytest.raises(ModelError, match="predicts 'flow'; only epsilon, v_prediction, sample"):
        load_pipeline(tmp_path / "flow", device="cpu")


def test_a_unet_without_the_injected_layers_is_refused(tmp_path):
    pipe = build_random_pipeline("tiny")
    pipe.unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
        sample_size=16,
    )
    pipe.save_pretrained(tmp_path / "other")
    with pytest.raises(
        ModelError,
        match="its UNet has no module up_blocks.2.attentions.0.transformer_blocks.0.attn1, "
        "where PnP injects features; it is not a Stable Diffusion 1.x, 2.x or SDXL UNet",
    ):
        load_pipeline(tmp_path / "other", device="cpu")


def test_sdxl_loads_as_the_xl_pipeline_with_its_size(tiny_sdxl_model_dir, tiny_v_model_dir, tiny_model_dir):
    from pnp.pipelines.base import PnPBasePipeline
    from pnp.pipelines.pipeline_pnp_xl import PnPXLPipeline

    xl = load_pipeline(tiny_sdxl_model_dir, device="cpu", dtype="float32")
    assert type(xl) is PnPXLPipeline and isinstance(xl, PnPBasePipeline)
    built = build_random_pipeline("tiny-sdxl")
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours, theirs = getattr(built, name).state_dict(), getattr(xl, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert xl.config.force_zeros_for_empty_prompt and xl.safety_checker is None
    # The model's own size: UNet sample size times the VAE's factor of 8 (SDXL's 128 latents make 1024 px).
    sizes = [
        load_pipeline(m, device="cpu", dtype="float32").default_resolution for m in (tiny_model_dir, tiny_v_model_dir)
    ]
    assert sizes + [xl.default_resolution] == [16 * 8, 24 * 8, 32 * 8]


def test_without_a_resolution_each_model_works_at_its_own_size(pipe, tiny_v_model_dir, photo):
    """160x128 at the tiny model's 128 px is 192x128 (160 rounds up to 192); at tiny-v's 192 px, 256x192 (240 rounds to
    256)."""
    v_pipe = PnPPipeline.from_pretrained(tiny_v_model_dir, device="cpu", dtype="float32")
    v_pipe.set_progress_bar_config(disable=True)
    assert pipe(prompt="a cat", image=photo, num_inference_steps=2).images[0].size == (192, 128)
    [image] = v_pipe(prompt="a cat", image=photo, num_inference_steps=2).images  # a v-prediction model, end to end
    assert image.size == (256, 192)
    result = v_pipe(prompt="a cat", generation_prompt="a horse", num_inference_steps=2, generator=torch.Generator())
    assert result.source_image.size == (192, 192)


@pytest.mark.parametrize("folder", ["tiny_model_dir", "tiny_sdxl_model_dir", "toy"])
def test_a_folders_own_resolution_is_read_before_loading_as_the_loaded_pipeline_has_it(request, folder):
    """The command line checks a mask's size at it before the model loads: it must be the loaded model's size."""
    model = model_location(folder) if folder == "toy" else request.getfixturevalue(folder)
    loaded = load_pipeline(model, device="cpu", dtype="float32")
    assert own_resolution(model) == loaded.default_resolution


@pytest.mark.parametrize("model", ["tiny", "model.safetensors", "someone/not-in-the-cache"])
def test_without_configuration_files_to_read_the_own_resolution_is_unknown(tmp_path, monkeypatch, model):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert own_resolution(model) is None
